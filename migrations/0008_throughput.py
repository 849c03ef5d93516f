"""Scoring throughput: cells per second of each finished job, per model version and engine.

`selectit score --estimate` and `selectit plan --dry-run` turn the recent rate of a model
version and engine into an estimated time for the cells still missing.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "throughput",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("engine", sa.String(length=16), nullable=False),
        sa.Column("engine_version", sa.String(length=200), nullable=True),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("cells", sa.Integer(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name="fk_throughput_model_id_models"),
        sa.PrimaryKeyConstraint("id", name="pk_throughput"),
    )
    with op.batch_alter_table("throughput", schema=None) as batch_op:
        batch_op.create_index("ix_throughput_model_engine", ["model_id", "engine", "recorded_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("throughput", schema=None) as batch_op:
        batch_op.drop_index("ix_throughput_model_engine")
    op.drop_table("throughput")
