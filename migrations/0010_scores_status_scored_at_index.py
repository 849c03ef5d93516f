"""An index on `scores` (`status`, `scored_at`) in place of the one on `status` alone:
`selectit status` counts the ok cells scored in the last minute and the last ten minutes, a range
of this index, instead of every ok cell (with `status` alone, the `ok` cells are nearly all rows).
Every lookup by status alone uses the new index's first column.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("scores", schema=None) as batch_op:
        batch_op.create_index("ix_scores_status_scored_at", ["status", "scored_at"], unique=False)
        batch_op.drop_index("ix_scores_status")


def downgrade() -> None:
    with op.batch_alter_table("scores", schema=None) as batch_op:
        batch_op.create_index("ix_scores_status", ["status"], unique=False)
        batch_op.drop_index("ix_scores_status_scored_at")
