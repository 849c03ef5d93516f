"""Job membership tables: the planner excludes cells of open jobs with a SQL anti-join.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table("job_samples",
    sa.Column("job_id", sa.Integer(), nullable=False),
    sa.Column("sample_id", sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("job_id", "sample_id")
    )
    with op.batch_alter_table("job_samples", schema=None) as batch_op:
        batch_op.create_index("ix_job_samples_sample", ["sample_id"], unique=False)

    op.create_table("job_prompts",
    sa.Column("job_id", sa.Integer(), nullable=False),
    sa.Column("prompt_id", sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("job_id", "prompt_id")
    )


def downgrade() -> None:
    op.drop_table("job_prompts")
    with op.batch_alter_table("job_samples", schema=None) as batch_op:
        batch_op.drop_index("ix_job_samples_sample")
    op.drop_table("job_samples")
