"""Score provenance: the engine that computed each cell and its versions.

`scores.engine` (`torch` | `vllm`) and `scores.engine_version` (e.g. "torch 2.13.0+cpu,
transformers 5.23.0" or "vllm 0.32.0"); NULL for cells stored before this revision.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("scores", schema=None) as batch_op:
        batch_op.add_column(sa.Column("engine", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("engine_version", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scores", schema=None) as batch_op:
        batch_op.drop_column("engine_version")
        batch_op.drop_column("engine")
