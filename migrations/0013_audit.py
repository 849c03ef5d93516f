"""Audits: known-bad twins of a dataset's records, kept in an audit dataset of their own.

`selectit audit --dataset D` draws records of D, makes known-bad twins of them (another
record's response, the response cut short, a refusal, the instruction echoed, a replaced
assistant turn) and stores originals and twins as the members of the dataset `D.audit`; these
tables say which dataset audits which, and what each member is. Twins are samples like any
other (scored once, by the same planner), but only the audit dataset holds them.

Revision ID: 0013
Revises: 0010
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audits",
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("subject_id", sa.Integer(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], name="fk_audits_dataset_id_datasets",
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["subject_id"], ["datasets.id"], name="fk_audits_subject_id_datasets",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("dataset_id", name="pk_audits"),
        sa.UniqueConstraint("subject_id", name="uq_audits_subject_id"),
    )
    op.create_table(
        "audit_samples",
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("sample_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("source_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["dataset_id"], ["audits.dataset_id"], name="fk_audit_samples_dataset_id_audits",
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["sample_id"], ["samples.id"], name="fk_audit_samples_sample_id_samples"),
        sa.ForeignKeyConstraint(["source_id"], ["samples.id"], name="fk_audit_samples_source_id_samples"),
        sa.PrimaryKeyConstraint("dataset_id", "sample_id", name="pk_audit_samples"),
    )


def downgrade() -> None:
    op.drop_table("audit_samples")
    op.drop_table("audits")
