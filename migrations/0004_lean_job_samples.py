"""Lean job membership: `job_samples` without its foreign key and its per-sample index.

The planner writes a job's membership rows in the transaction that creates the job, from the
job's own JSON list, and the code that ends a job deletes them; nothing else writes the table.
At a million samples × 2 models that is 2M rows per plan, and the foreign-key check (one
trigger call per row on PostgreSQL) and the second index cost more than the rows themselves.
The planner reads the table whole (grouped per sample) and the runner by job (the primary key),
so `ix_job_samples_sample` served no query.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FK_NAME = "fk_job_samples_job_id_jobs"  # as NAMING_CONVENTION names it (SQLite's has no name)


def upgrade() -> None:
    names = [fk["name"] for fk in sa.inspect(op.get_bind()).get_foreign_keys("job_samples")]
    with op.batch_alter_table("job_samples", naming_convention={
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}) as batch_op:
        batch_op.drop_index("ix_job_samples_sample")
        for name in names:
            batch_op.drop_constraint(name or FK_NAME, type_="foreignkey")


def downgrade() -> None:
    with op.batch_alter_table("job_samples") as batch_op:
        batch_op.create_foreign_key(FK_NAME, "jobs", ["job_id"], ["id"], ondelete="CASCADE")
        batch_op.create_index("ix_job_samples_sample", ["sample_id"], unique=False)
