"""The fleet's clock: the last run of each control tick (`selectit.workers.control`), stored by the
worker that ran it and shown by `selectit status`."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from selectit.store import db
from selectit.store.schema import ControlTick


def record_tick(engine: Engine, name: str, worker: str, started_at: dt.datetime, seconds: float,
                error: str | None) -> None:
    """Store one run of control tick `name` (its own short transaction, after the tick)."""
    values = {"worker": worker, "started_at": started_at, "seconds": seconds, "error": error}
    if error:
        values["failed_at"] = started_at
    with db.session_scope(engine) as session:
        stmt = db.upsert(session, ControlTick).values(name=name, runs=1, **values)
        session.execute(stmt.on_conflict_do_update(
            index_elements=["name"], set_={**values, "runs": ControlTick.runs + 1}))


@dataclass(frozen=True)
class TickRow:
    name: str
    worker: str
    started_at: dt.datetime
    seconds: float
    runs: int
    error: str | None
    failed_at: dt.datetime | None


def tick_rows(engine: Engine) -> list[TickRow]:
    """The last run of each control tick, by name (empty when no worker has kept the clock)."""
    with db.read_scope(engine) as session:
        return [TickRow(t.name, t.worker, t.started_at, t.seconds, t.runs, t.error, t.failed_at)
                for t in session.scalars(sa.select(ControlTick).order_by(ControlTick.name))]
