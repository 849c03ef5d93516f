"""Originals: each ingested file (`ingests`) and each membership's record as it was ingested.

`dataset_samples.original` holds the record's own text (the JSON object or JSONL line as it was in
the file; a Parquet/Arrow/CSV row as compact JSON), `dataset_samples.ingest_id` the file it came
from; `ingests` keeps the file's path, sha256, format and container layout, so an export can give
the records back in the input's own format. Rows ingested before this revision have neither.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ingests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("format", sa.String(length=32), nullable=False),
        sa.Column("container", sa.String(length=16), nullable=False),
        sa.Column("layout", sa.JSON(), nullable=False),
        sa.Column("column_map", sa.JSON(), nullable=True),
        sa.Column("split", sa.String(length=200), nullable=True),
        sa.Column("n_read", sa.Integer(), nullable=False),
        sa.Column("n_new", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], name="fk_ingests_dataset_id_datasets",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_ingests"),
    )
    op.create_index("ix_ingests_dataset", "ingests", ["dataset_id"], unique=False)
    with op.batch_alter_table("dataset_samples", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ingest_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("original", sa.Text(), nullable=True))
        batch_op.create_foreign_key("fk_dataset_samples_ingest_id_ingests", "ingests", ["ingest_id"], ["id"],
                                    ondelete="SET NULL")


def downgrade() -> None:
    with op.batch_alter_table("dataset_samples", schema=None) as batch_op:
        batch_op.drop_constraint("fk_dataset_samples_ingest_id_ingests", type_="foreignkey")
        batch_op.drop_column("original")
        batch_op.drop_column("ingest_id")
    op.drop_index("ix_ingests_dataset", table_name="ingests")
    op.drop_table("ingests")
