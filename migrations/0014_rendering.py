"""The rendering version joins a cell's key: `scores.rendering`.

A conversation of several rated turns in the shared-context layout is now rendered as a growing
transcript (`selectit.contract.render_transcript`), so its turns score in one pass. Its cells
scored before this revision read another text: they are kept for audit with `rendering` 0 and
never read again (the planner sees those cells as missing). Every other stored cell — single-turn
samples, the `reference` layout — reads the very same text under the new rules and carries
`rendering` 1 (`selectit.contract.RENDERING`), so nothing else is rescored.

The column's server default is the current version (1): a row inserted without it is a cell of
the current rendering, as it was before this revision.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

import warnings
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = ["sample_id", "model_id", "prompt_id", "turn"]
#: Cells whose text the transcript rendering changed: several rated turns, shared-context layout.
_TRANSCRIPT = ("EXISTS (SELECT 1 FROM samples s JOIN prompts p ON p.id = scores.prompt_id "
               "WHERE s.id = scores.sample_id AND s.n_turns > 1 AND s.turns IS NOT NULL "
               "AND p.layout = 'shared-context')")


def _set_primary_key(columns: list[str]) -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        name = sa.inspect(bind).get_pk_constraint("scores")["name"] or "scores_pkey"
        op.drop_constraint(name, "scores", type_="primary")
        op.create_primary_key(name, "scores", columns)
        return
    with warnings.catch_warnings():  # SQLite: the table is copied with its new key (as in 0011)
        warnings.filterwarnings("ignore", "Table '_alembic_tmp_scores' specifies columns", sa.exc.SAWarning)
        with op.batch_alter_table("scores", recreate="always") as batch_op:
            batch_op.create_primary_key("pk_scores", columns)


def upgrade() -> None:
    with op.batch_alter_table("scores", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rendering", sa.Integer(), server_default="1", nullable=False))
    op.execute(f"UPDATE scores SET rendering = 0 WHERE {_TRANSCRIPT}")
    _set_primary_key([*KEY, "rendering"])


def downgrade() -> None:
    # The transcript cells have no place in the old key; the cells they replaced are read again.
    op.execute(f"DELETE FROM scores WHERE rendering = 1 AND {_TRANSCRIPT}")
    _set_primary_key(KEY)
    with op.batch_alter_table("scores", schema=None) as batch_op:
        batch_op.drop_column("rendering")
