"""Finding a named dataset, model version or selection in the store: the one place that raises
`NoSuchDataset`, `NoSuchModel` and `NoSuchSelection` for the SQLAlchemy side (the DuckDB side,
`selectit.fusion`, raises the same errors with the same messages).
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from selectit.errors import NoSuchDataset, NoSuchModel, NoSuchSelection
from selectit.store.schema import LLM, Dataset, Selection


def dataset_id(session: Session, name: str) -> int:
    """The id of dataset `name`."""
    found = session.scalar(sa.select(Dataset.id).where(Dataset.name == name))
    if found is None:
        raise NoSuchDataset.named(name, session.scalars(sa.select(Dataset.name)))
    return found


def active_models(session: Session, names: Iterable[str] | None = None) -> list[LLM]:
    """The active versions of the models `names` (default: every active model), by name.

    Raises `NoSuchModel` naming the unknown ones, or saying that none is registered.
    """
    active = list(session.scalars(sa.select(LLM).where(LLM.active.is_(True)).order_by(LLM.name, LLM.id)))
    if names is None:
        if not active:
            raise NoSuchModel.none_registered()
        return active
    wanted = list(dict.fromkeys(names))
    unknown = [n for n in wanted if n not in {m.name for m in active}]
    if unknown:
        raise NoSuchModel.named(unknown, {m.name for m in active})
    return [m for m in active if m.name in set(wanted)]


def active_model(session: Session, name: str) -> LLM:
    """The active version of model `name`."""
    return active_models(session, [name])[0]


def selection(session: Session, name: str) -> Selection:
    """The frozen selection `name`."""
    found = session.scalars(sa.select(Selection).where(Selection.name == name)).one_or_none()
    if found is None:
        raise NoSuchSelection.named(name, session.scalars(sa.select(Selection.name)))
    return found
