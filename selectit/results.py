"""What the `Store`'s methods return: plain frozen values (tables come back as `pyarrow.Table`).

They are importable from `selectit.api` as well, where the methods that return them live.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

    from selectit.fusion.selection import Criterion
    from selectit.fusion.views import Coverage, Params
    from selectit.jobs.ticks import TickRow
    from selectit.status import ModelProgress, StatusRow
    from selectit.store.schema import LLM


@dataclass(frozen=True)
class SelectionInfo:
    """A frozen selection, as `Store.select` made it."""

    name: str
    id: int
    dataset: str
    n_selected: int
    n_rankable: int
    coverage: Coverage | None = None
    how: str = ""  # how the samples were chosen, e.g. "top 0.2 share" or "random 0.2 share, seed 1"
    warning: str | None = None  # only part of the dataset was rankable


@dataclass(frozen=True)
class ModelVersion:
    """One registered model version (`selectit models`)."""

    id: int
    name: str
    dtype: str
    n_params: int | None  # None: a served model registered without --params
    weight: float | None
    active: bool
    source: str  # of a served model: its tokenizer
    fingerprint: str
    added: bool = False  # `add_model`: a new version (else the same weights and dtype were known)
    endpoint: str | None = None  # a served model: the OpenAI-compatible server's base URL
    served_model: str | None = None  # … and the id it serves the model under

    @classmethod
    def of(cls, row: LLM, *, added: bool = False) -> ModelVersion:
        return cls(row.id, row.name, row.dtype, row.n_params, row.weight, bool(row.active), row.source,
                   row.fingerprint, added, row.endpoint, row.served_model)


@dataclass(frozen=True)
class StoreStatus:
    """What `selectit status` shows: samples per dataset, distinct samples, scoring per model × set."""

    samples_per_dataset: list[tuple[str, int]]
    distinct_samples: int
    scoring: list[StatusRow]
    control_ticks: list[TickRow] = field(default_factory=list)  # the fleet's clock: last run of each tick
    models: list[ModelProgress] = field(default_factory=list)  # per model version: rates and ETA
    dataset: str | None = None  # the dataset the counts are of (None: every dataset)
    signatures: tuple[int, int] = (0, 0)  # near-duplicate signature cells: (stored, samples without one)


@dataclass(frozen=True)
class PlanResult:
    planned: int  # new jobs
    sent: int  # sent to the broker
    resent: int = 0  # queued earlier but never sent (a failed plan, a lost broker), sent now


@dataclass(frozen=True)
class RankSummary:
    """What `selectit rank` shows: the parameters, the head of the ranking (with each sample's
    instruction), how many samples are rankable and kept, and the dataset's coverage."""

    dataset: str
    params: Params
    criterion: Criterion
    head: pa.Table  # rank, sample_id, position, s_model, instruction
    n_rankable: int
    n_chosen: int
    coverage: Coverage
    warning: str | None = None  # only part of the dataset is rankable
    n_kept: int | None = None  # rankable samples left after the ranking's dedup and per-group cap


@dataclass(frozen=True)
class InitResult:
    url: str  # shown without its password
    before: str | None  # the revision found (None: an empty database)
    after: str
