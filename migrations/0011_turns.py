"""A rating cell per assistant turn: `scores.turn` joins the key, samples know their turns.

- `scores.turn` (part of the primary key, default 0): assistant turns counted back from the
  sample's last one. Every stored score rated the last assistant turn (the sample's `output`), so
  every stored score becomes turn 0 as it is: nothing is lost or rescored.
- `samples.n_turns` (default 1) and `samples.turns` (JSON, null): the rated assistant turns and
  the conversation they are rendered from. Samples ingested from conversations before this
  revision get them from their stored originals (`dataset_samples.original`, read as the file's
  shape and column map said) where the original renders to the very same sample; their earlier
  turns are then missing cells the planner picks up. A sample without such an original keeps one
  turn, its last.
- `jobs.turn` (default 0): the turn a job's cells rate.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

import json
import warnings
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = ["sample_id", "model_id", "prompt_id"]
#: The role labels a multi-turn instruction starts with (`selectit.io.records.ROLE_LABEL`).
_LABELS = ("System: ", "User: ", "Assistant: ", "Tool: ")


def _set_primary_key(columns: list[str]) -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        name = sa.inspect(bind).get_pk_constraint("scores")["name"] or "scores_pkey"
        op.drop_constraint(name, "scores", type_="primary")
        op.create_primary_key(name, "scores", columns)
        return
    # SQLite: the table is copied with its new key (batch mode reflects the rest, and warns that
    # the reflected key differs from the new one: that is the point).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Table '_alembic_tmp_scores' specifies columns", sa.exc.SAWarning)
        with op.batch_alter_table("scores", recreate="always") as batch_op:
            batch_op.create_primary_key("pk_scores", columns)


def _backfill_turns() -> None:
    """`samples.turns` / `n_turns` of samples stored from conversations, from their originals."""
    from selectit.io.records import BadRecord, canonical, digest, parse, rated_turns

    bind = op.get_bind()
    like = " OR ".join(f"s.instruction LIKE '{label}%'" for label in _LABELS)
    rows = bind.execute(sa.text(
        "SELECT s.id, s.content_hash, ds.original, i.layout, i.column_map FROM samples s "
        "JOIN dataset_samples ds ON ds.sample_id = s.id JOIN ingests i ON i.id = ds.ingest_id "
        f"WHERE ds.original IS NOT NULL AND ({like}) ORDER BY s.id")).all()
    done: set[int] = set()
    update = sa.text("UPDATE samples SET turns = :turns, n_turns = :n WHERE id = :id")
    for sample_id, content_hash, original, layout, column_map in rows:
        if sample_id in done:
            continue
        layout = json.loads(layout) if isinstance(layout, str) else layout or {}
        column_map = json.loads(column_map) if isinstance(column_map, str) else column_map
        try:
            conv = parse(json.loads(original), layout.get("shape", "alpaca"), column_map)
            instruction, inp, output = (canonical(x) for x in conv.sample())
        except (BadRecord, ValueError, TypeError, KeyError):
            continue
        turns = conv.stored_turns()
        if turns is None or digest(instruction, inp, output) != content_hash:
            continue
        done.add(sample_id)
        bind.execute(update, {"turns": json.dumps(turns, ensure_ascii=False), "n": len(rated_turns(turns)),
                              "id": sample_id})


def upgrade() -> None:
    with op.batch_alter_table("samples", schema=None) as batch_op:
        batch_op.add_column(sa.Column("n_turns", sa.Integer(), server_default="1", nullable=False))
        batch_op.add_column(sa.Column("turns", sa.JSON(), nullable=True))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("turn", sa.Integer(), server_default="0", nullable=False))
    with op.batch_alter_table("scores", schema=None) as batch_op:
        batch_op.add_column(sa.Column("turn", sa.Integer(), server_default="0", nullable=False))
    _set_primary_key([*KEY, "turn"])
    _backfill_turns()


def downgrade() -> None:
    op.execute("DELETE FROM scores WHERE turn <> 0")  # earlier turns have no place in the old key
    _set_primary_key(KEY)
    with op.batch_alter_table("scores", schema=None) as batch_op:
        batch_op.drop_column("turn")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("turn")
    with op.batch_alter_table("samples", schema=None) as batch_op:
        batch_op.drop_column("turns")
        batch_op.drop_column("n_turns")
