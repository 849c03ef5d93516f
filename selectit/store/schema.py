"""The curation store: SQLAlchemy 2.x tables (docs/data-model.md).

Data flows one way: datasets → samples → jobs → scores → selections. The `scores` table is the
cache keyed by what produced a rating (sample, model version, prompt version, turn): nothing is scored
twice, and new models or prompts simply leave new cells missing.

The migrations in `migrations/` build this schema; `tests/store/test_db.py` checks they agree.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from selectit.contract import RENDERING, CellStatus, JobStatus, Layout

#: The largest rating scale: each label must be one token, and "10" rarely is.
MAX_SCALE = 9


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


#: Constraint names the database reports back; the migrations spell out the same names.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def state(enum: type[StrEnum], name: str, length: int) -> Enum:
    """A column of one of the contract's states: a VARCHAR holding the enum's *values*, with a
    CHECK constraint `ck_<table>_<name>` (no native ENUM type: adding a state stays a plain
    constraint change on both SQLite and PostgreSQL). Reads give the `StrEnum` member."""
    return Enum(enum, name=name, length=length, native_enum=False, create_constraint=True,
                values_callable=lambda members: [m.value for m in members])


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    source: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, server_default=func.now())


class Sample(Base):
    """One row per distinct content; the same record in two datasets is stored (and scored) once."""

    __tablename__ = "samples"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # sha256 hex of the canonical form (NFC, \r\n → \n) of instruction, input and output.
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    instruction: Mapped[str] = mapped_column(Text)
    input: Mapped[str] = mapped_column(Text, default="")
    output: Mapped[str] = mapped_column(Text)
    n_chars: Mapped[int] = mapped_column(Integer)
    #: The rated assistant turns (1 for an Alpaca record) and, for a sample whose context is more
    #: than one user turn, the conversation through its last assistant turn as [[role, text], …]
    #: in canonical form: turn t (counted back from the last) is rendered from it (revision 0011).
    n_turns: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    turns: Mapped[list[Any] | None] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, server_default=func.now())


class DatasetSample(Base):
    """Membership of a sample in a dataset, at the position of its first occurrence."""

    __tablename__ = "dataset_samples"
    __table_args__ = (
        UniqueConstraint("dataset_id", "position", name="uq_dataset_samples_position"),
        Index("ix_dataset_samples_sample", "sample_id"),
    )

    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    original_id: Mapped[str | None] = mapped_column(String(200))
    # The file this membership came from, and the record as it was there (exact JSON text, or a
    # Parquet/Arrow/CSV row as compact JSON): `selectit export --format original` writes it back.
    ingest_id: Mapped[int | None] = mapped_column(ForeignKey("ingests.id", ondelete="SET NULL"))
    original: Mapped[str | None] = mapped_column(Text)


class Ingest(Base):
    """One ingested file: its hash and format, and how its container looked (for exporting back)."""

    __tablename__ = "ingests"
    __table_args__ = (Index("ix_ingests_dataset", "dataset_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))  # of the file (of a save_to_disk directory's files)
    size: Mapped[int] = mapped_column(BigInteger)
    format: Mapped[str] = mapped_column(String(32))  # alpaca-json | jsonl | sharegpt | messages | parquet | …
    container: Mapped[str] = mapped_column(String(16))  # json | jsonl | parquet | csv | tsv | arrow | hf-dir
    # JSON list whitespace, JSONL line ending, CSV header, or the Arrow schema (base64 IPC).
    layout: Mapped[dict[str, Any]] = mapped_column(JSON)
    column_map: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # selectit field → the file's column
    split: Mapped[str | None] = mapped_column(String(200))  # of a DatasetDict
    n_read: Mapped[int] = mapped_column(Integer)
    n_new: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, server_default=func.now())


class LLM(Base):
    """One row per model *version*: new weights or a new dtype make a new row (and new cells)."""

    __tablename__ = "models"
    __table_args__ = (
        UniqueConstraint("name", "fingerprint", "dtype", name="uq_models_version"),
        Index("ix_models_name_active", "name", "active"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # hub id, local directory or .gguf file (of a served model: where its tokenizer is)
    source: Mapped[str] = mapped_column(Text)
    # sha256 of the weights files (of a served model: of its id and what /v1/models says of it)
    fingerprint: Mapped[str] = mapped_column(String(64))
    dtype: Mapped[str] = mapped_column(String(16))  # float32 | bfloat16 | float16 | server (a served model)
    n_params: Mapped[int | None] = mapped_column(BigInteger)  # None: a served model registered without --params
    weight: Mapped[float | None] = mapped_column(Float)  # θ override; None → n_params
    # {layout: [token id of "1", …, token id of "9"]}, derived from the model's own tokenizer.
    label_ids: Mapped[dict[str, Any]] = mapped_column(JSON)
    max_tokens: Mapped[int] = mapped_column(Integer)  # context length used for truncation
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    #: A model served by an OpenAI-compatible server (`--endpoint`): its base URL (no credentials),
    #: the id the server serves it under, and the environment variable that holds the API key
    #: (the key itself is never stored). NULL for local models.
    endpoint: Mapped[str | None] = mapped_column(Text)
    served_model: Mapped[str | None] = mapped_column(String(200))
    api_key_env: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, server_default=func.now())


class Prompt(Base):
    """One row per prompt version; editing a prompt's text makes a new version."""

    __tablename__ = "prompts"
    __table_args__ = (
        UniqueConstraint("set_name", "position", "layout", "scale", "text_hash", name="uq_prompts_version"),
        Index("ix_prompts_set_active", "set_name", "active"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    set_name: Mapped[str] = mapped_column(String(200))
    position: Mapped[int] = mapped_column(Integer)  # 0-based place in the set
    layout: Mapped[Layout] = mapped_column(state(Layout, "layout", 32))
    template: Mapped[str] = mapped_column(Text)
    text_hash: Mapped[str] = mapped_column(String(64))
    scale: Mapped[int] = mapped_column(Integer, default=5)  # K: labels 1..K
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, server_default=func.now())


class Score(Base):
    """One rating cell: the raw label probabilities of (sample, model version, prompt version, turn).

    `turn` counts assistant turns back from the sample's last: 0 is the last one (the sample's
    `output`, what every cell rated before revision 0011), 1 the one before it, and so on.
    `rendering` is the version of the rendering rules (revision 0014): a conversation of several
    turns rendered as a transcript is another cell than the same turn rendered before.

    `p1..p9` hold the softmax probability (over the full vocabulary) of each label token; only
    p1..pK are set for a prompt of scale K. `mass` = Σ p_k. A failed cell keeps status
    'failed' and its error, and no probabilities.
    """

    __tablename__ = "scores"
    __table_args__ = (
        Index("ix_scores_model_prompt", "model_id", "prompt_id"),
        # `selectit status` counts the ok cells of the last minutes: a range of this index.
        Index("ix_scores_status_scored_at", "status", "scored_at"),
    )

    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"), primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"), primary_key=True)
    turn: Mapped[int] = mapped_column(Integer, primary_key=True, default=0, server_default="0")
    #: The rendering rules the cell's prompt was rendered by (`selectit.contract.RENDERING`); only the
    #: current version's cells are read, older ones stay for audit (migration 0014).
    rendering: Mapped[int] = mapped_column(Integer, primary_key=True, default=RENDERING, server_default=str(RENDERING))
    p1: Mapped[float | None] = mapped_column(Float)
    p2: Mapped[float | None] = mapped_column(Float)
    p3: Mapped[float | None] = mapped_column(Float)
    p4: Mapped[float | None] = mapped_column(Float)
    p5: Mapped[float | None] = mapped_column(Float)
    p6: Mapped[float | None] = mapped_column(Float)
    p7: Mapped[float | None] = mapped_column(Float)
    p8: Mapped[float | None] = mapped_column(Float)
    p9: Mapped[float | None] = mapped_column(Float)
    mass: Mapped[float | None] = mapped_column(Float)
    n_tokens: Mapped[int | None] = mapped_column(Integer)
    truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Top-k mode: a label was outside the server's top K and counts as 0 (the mass is too low).
    partial: Mapped[bool | None] = mapped_column(Boolean, default=False)
    status: Mapped[CellStatus] = mapped_column(state(CellStatus, "status", 16), default=CellStatus.OK)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    scored_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, server_default=func.now())
    worker: Mapped[str | None] = mapped_column(String(200))
    #: Provenance: the engine that computed the cell (`torch` | `vllm` | `openai`) and its versions,
    #: e.g. "torch 2.13.0+cpu, transformers 5.23.0", "vllm 0.32.0", or for `openai` the endpoint's
    #: host, the served model id and the mode ("http://10.0.0.5:8000, model llama, exact (echo)"). Cells of either engine are
    #: the same cell (same model and prompt version): the parity tests make that honest.
    engine: Mapped[str | None] = mapped_column(String(16))
    engine_version: Mapped[str | None] = mapped_column(String(200))


class Job(Base):
    """A claimed chunk of missing cells for one model version: samples × prompts at one `turn`."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_model", "status", "model_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    sample_ids: Mapped[list[Any]] = mapped_column(JSON)
    prompt_ids: Mapped[list[Any]] = mapped_column(JSON)
    turn: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # as `Score.turn`
    n_cells: Mapped[int] = mapped_column(Integer)
    est_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    status: Mapped[JobStatus] = mapped_column(state(JobStatus, "status", 16), default=JobStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, server_default=func.now())
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class ControlTick(Base):
    """The last run of each piece of the fleet's periodic bookkeeping (`plan`, `requeue-expired`):
    when, by which worker, how long it took, and its error if it failed (`selectit status`)."""

    __tablename__ = "control_ticks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    worker: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[dt.datetime] = mapped_column(DateTime)
    seconds: Mapped[float] = mapped_column(Float)
    runs: Mapped[int] = mapped_column(Integer, default=1)
    #: The error of the last run (None: it succeeded); `failed_at`: when a run last failed.
    error: Mapped[str | None] = mapped_column(Text)
    failed_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class JobSample(Base):
    """The samples of an *open* job, so the planner can exclude their cells in SQL (rows are
    deleted when the job ends; `Job.sample_ids` keeps the record). No foreign key and no index
    but the key: one plan writes millions of these rows (migration 0004)."""

    __tablename__ = "job_samples"

    job_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sample_id: Mapped[int] = mapped_column(Integer, primary_key=True)


class JobPrompt(Base):
    """The prompt versions of a job: its cells are job_samples × job_prompts for its model."""

    __tablename__ = "job_prompts"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    prompt_id: Mapped[int] = mapped_column(Integer, primary_key=True)


class Throughput(Base):
    """How fast a finished job scored: cells and seconds (model load excluded), per model version
    and engine. `score --estimate` and `plan --dry-run` turn the recent rate into a time."""

    __tablename__ = "throughput"
    __table_args__ = (Index("ix_throughput_model_engine", "model_id", "engine", "recorded_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    engine: Mapped[str] = mapped_column(String(16))  # torch | vllm | the scorer hook's, else "unknown"
    engine_version: Mapped[str | None] = mapped_column(String(200))
    worker: Mapped[str | None] = mapped_column(String(200))
    job_id: Mapped[int | None] = mapped_column(Integer)
    cells: Mapped[int] = mapped_column(Integer)  # cells written (ok or failed)
    tokens: Mapped[int] = mapped_column(BigInteger)  # the planner's token estimate of the job
    seconds: Mapped[float] = mapped_column(Float)
    recorded_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, server_default=func.now())


class Selection(Base):
    """A named, frozen selection: its parameters and chosen samples, exportable byte for byte."""

    __tablename__ = "selections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    n_selected: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, server_default=func.now())


class SelectionSample(Base):
    __tablename__ = "selection_samples"

    selection_id: Mapped[int] = mapped_column(ForeignKey("selections.id", ondelete="CASCADE"), primary_key=True)
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)  # 1-based
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"))
    score: Mapped[float] = mapped_column(Float)


class Audit(Base):
    """An audit dataset (`D.audit`) and the dataset D it audits: one audit per dataset, its
    draw's seed and size (`selectit audit`)."""

    __tablename__ = "audits"

    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), unique=True)
    seed: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(Integer)  # records of D drawn
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, server_default=func.now())


class AuditSample(Base):
    """A member of an audit dataset: a drawn record of D (`kind` clean) or a known-bad twin of
    one (`source_id`: the drawn record it was made from)."""

    __tablename__ = "audit_samples"

    dataset_id: Mapped[int] = mapped_column(ForeignKey("audits.dataset_id", ondelete="CASCADE"), primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # clean | mismatched | truncated | refusal | echo | turn
    source_id: Mapped[int] = mapped_column(ForeignKey("samples.id"))
class SignatureConfig(Base):
    """One version of the near-duplicate signature producer: the MinHash library and its version,
    the hash scheme, seed, n-gram, permutations and bands (`config`, JSON). A change of any of
    them is a new row, and its signature cells are missing (`selectit.store.signatures`)."""

    __tablename__ = "signature_configs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    config_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 of the canonical config JSON
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, server_default=func.now())


class SampleSignature(Base):
    """A signature cell: the MinHash signature of one sample's whole text under one config, with
    the keys of its exact duplicates (`norm_key`: the normalised whole text) and of its prompt
    (`prompt_key`: the normalised first user turn), both signed 64-bit hashes."""

    __tablename__ = "sample_signatures"

    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"), primary_key=True)
    config_id: Mapped[int] = mapped_column(ForeignKey("signature_configs.id"), primary_key=True)
    norm_key: Mapped[int] = mapped_column(BigInteger)
    prompt_key: Mapped[int] = mapped_column(BigInteger)
    n_shingles: Mapped[int] = mapped_column(Integer)
    signature: Mapped[bytes] = mapped_column(LargeBinary)  # num_perm little-endian uint32
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, server_default=func.now())


class SignatureBand(Base):
    """LSH: one row per (config, band, bucket, sample); samples sharing a bucket in any band are
    candidate near-duplicates (a DuckDB self-join, `selectit.fusion.dedup`). A plain heap: no index
    but the row id, because the join scans the rows anyway and a key over random buckets made
    every insert 4–8× slower (the rows are written once, with their new signature cell)."""

    __tablename__ = "signature_bands"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    config_id: Mapped[int] = mapped_column(ForeignKey("signature_configs.id"))
    band: Mapped[int] = mapped_column(Integer)
    bucket: Mapped[int] = mapped_column(BigInteger)
    sample_id: Mapped[int] = mapped_column(Integer)


class Embedder(Base):
    """One version of the embedding producer: the rater model version whose hidden states are
    mean-pooled, the pooling, the token limit and the floor of `similar_pairs` (`config`, JSON)."""

    __tablename__ = "embedders"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    config_hash: Mapped[str] = mapped_column(String(64), unique=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, server_default=func.now())


class SampleEmbedding(Base):
    """An embedding cell: one sample's L2-normalised vector under one embedder (float32 bytes)."""

    __tablename__ = "sample_embeddings"

    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"), primary_key=True)
    embedder_id: Mapped[int] = mapped_column(ForeignKey("embedders.id"), primary_key=True)
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, server_default=func.now())


class SimilarPair(Base):
    """A pairwise fact: two samples whose embeddings have cosine >= the embedder's floor
    (`sample_a` < `sample_b`), grown new × all as embeddings are added."""

    __tablename__ = "similar_pairs"

    embedder_id: Mapped[int] = mapped_column(ForeignKey("embedders.id"), primary_key=True)
    sample_a: Mapped[int] = mapped_column(Integer, primary_key=True)
    sample_b: Mapped[int] = mapped_column(Integer, primary_key=True)
    cosine: Mapped[float] = mapped_column(Float)
