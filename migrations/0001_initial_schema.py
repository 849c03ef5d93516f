"""Initial schema: datasets, samples, memberships, models, prompts, scores, jobs, selections.

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table("datasets",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("name", sa.String(length=200), nullable=False),
    sa.Column("source", sa.Text(), nullable=True),
    sa.Column("created_at", sa.DateTime(), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("name")
    )
    op.create_table("models",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("name", sa.String(length=200), nullable=False),
    sa.Column("source", sa.Text(), nullable=False),
    sa.Column("fingerprint", sa.String(length=64), nullable=False),
    sa.Column("dtype", sa.String(length=16), nullable=False),
    sa.Column("n_params", sa.BigInteger(), nullable=False),
    sa.Column("weight", sa.Float(), nullable=True),
    sa.Column("label_ids", sa.JSON(), nullable=False),
    sa.Column("max_tokens", sa.Integer(), nullable=False),
    sa.Column("active", sa.Boolean(), nullable=False),
    sa.Column("created_at", sa.DateTime(), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("name", "fingerprint", "dtype", name="uq_models_version")
    )
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.create_index("ix_models_name_active", ["name", "active"], unique=False)

    op.create_table("prompts",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("set_name", sa.String(length=200), nullable=False),
    sa.Column("position", sa.Integer(), nullable=False),
    sa.Column("layout", sa.String(length=32), nullable=False),
    sa.Column("template", sa.Text(), nullable=False),
    sa.Column("text_hash", sa.String(length=64), nullable=False),
    sa.Column("scale", sa.Integer(), nullable=False),
    sa.Column("active", sa.Boolean(), nullable=False),
    sa.Column("created_at", sa.DateTime(), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("set_name", "position", "layout", "scale", "text_hash", name="uq_prompts_version")
    )
    with op.batch_alter_table("prompts", schema=None) as batch_op:
        batch_op.create_index("ix_prompts_set_active", ["set_name", "active"], unique=False)

    op.create_table("samples",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("content_hash", sa.String(length=64), nullable=False),
    sa.Column("instruction", sa.Text(), nullable=False),
    sa.Column("input", sa.Text(), nullable=False),
    sa.Column("output", sa.Text(), nullable=False),
    sa.Column("n_chars", sa.Integer(), nullable=False),
    sa.Column("created_at", sa.DateTime(), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("content_hash")
    )
    op.create_table("dataset_samples",
    sa.Column("dataset_id", sa.Integer(), nullable=False),
    sa.Column("sample_id", sa.Integer(), nullable=False),
    sa.Column("position", sa.Integer(), nullable=False),
    sa.Column("original_id", sa.String(length=200), nullable=True),
    sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], ondelete="CASCADE"),
    sa.ForeignKeyConstraint(["sample_id"], ["samples.id"], ),
    sa.PrimaryKeyConstraint("dataset_id", "sample_id"),
    sa.UniqueConstraint("dataset_id", "position", name="uq_dataset_samples_position")
    )
    with op.batch_alter_table("dataset_samples", schema=None) as batch_op:
        batch_op.create_index("ix_dataset_samples_sample", ["sample_id"], unique=False)

    op.create_table("jobs",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("model_id", sa.Integer(), nullable=False),
    sa.Column("sample_ids", sa.JSON(), nullable=False),
    sa.Column("prompt_ids", sa.JSON(), nullable=False),
    sa.Column("n_cells", sa.Integer(), nullable=False),
    sa.Column("est_tokens", sa.BigInteger(), nullable=False),
    sa.Column("status", sa.String(length=16), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("worker", sa.String(length=200), nullable=True),
    sa.Column("lease_expires_at", sa.DateTime(), nullable=True),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("created_at", sa.DateTime(), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False),
    sa.Column("started_at", sa.DateTime(), nullable=True),
    sa.Column("finished_at", sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(["model_id"], ["models.id"], ),
    sa.PrimaryKeyConstraint("id")
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_status_model", ["status", "model_id"], unique=False)

    op.create_table("scores",
    sa.Column("sample_id", sa.Integer(), nullable=False),
    sa.Column("model_id", sa.Integer(), nullable=False),
    sa.Column("prompt_id", sa.Integer(), nullable=False),
    sa.Column("p1", sa.Float(), nullable=True),
    sa.Column("p2", sa.Float(), nullable=True),
    sa.Column("p3", sa.Float(), nullable=True),
    sa.Column("p4", sa.Float(), nullable=True),
    sa.Column("p5", sa.Float(), nullable=True),
    sa.Column("p6", sa.Float(), nullable=True),
    sa.Column("p7", sa.Float(), nullable=True),
    sa.Column("p8", sa.Float(), nullable=True),
    sa.Column("p9", sa.Float(), nullable=True),
    sa.Column("mass", sa.Float(), nullable=True),
    sa.Column("n_tokens", sa.Integer(), nullable=True),
    sa.Column("truncated", sa.Boolean(), nullable=False),
    sa.Column("status", sa.String(length=16), nullable=False),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("scored_at", sa.DateTime(), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False),
    sa.Column("worker", sa.String(length=200), nullable=True),
    sa.ForeignKeyConstraint(["model_id"], ["models.id"], ),
    sa.ForeignKeyConstraint(["prompt_id"], ["prompts.id"], ),
    sa.ForeignKeyConstraint(["sample_id"], ["samples.id"], ),
    sa.PrimaryKeyConstraint("sample_id", "model_id", "prompt_id")
    )
    with op.batch_alter_table("scores", schema=None) as batch_op:
        batch_op.create_index("ix_scores_model_prompt", ["model_id", "prompt_id"], unique=False)
        batch_op.create_index("ix_scores_status", ["status"], unique=False)

    op.create_table("selections",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("name", sa.String(length=200), nullable=False),
    sa.Column("dataset_id", sa.Integer(), nullable=False),
    sa.Column("params", sa.JSON(), nullable=False),
    sa.Column("n_selected", sa.Integer(), nullable=False),
    sa.Column("created_at", sa.DateTime(), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False),
    sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], ),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("name")
    )
    op.create_table("selection_samples",
    sa.Column("selection_id", sa.Integer(), nullable=False),
    sa.Column("rank", sa.Integer(), nullable=False),
    sa.Column("sample_id", sa.Integer(), nullable=False),
    sa.Column("score", sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(["sample_id"], ["samples.id"], ),
    sa.ForeignKeyConstraint(["selection_id"], ["selections.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("selection_id", "rank")
    )


def downgrade() -> None:
    op.drop_table("selection_samples")
    op.drop_table("selections")
    with op.batch_alter_table("scores", schema=None) as batch_op:
        batch_op.drop_index("ix_scores_status")
        batch_op.drop_index("ix_scores_model_prompt")

    op.drop_table("scores")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_status_model")

    op.drop_table("jobs")
    with op.batch_alter_table("dataset_samples", schema=None) as batch_op:
        batch_op.drop_index("ix_dataset_samples_sample")

    op.drop_table("dataset_samples")
    op.drop_table("samples")
    with op.batch_alter_table("prompts", schema=None) as batch_op:
        batch_op.drop_index("ix_prompts_set_active")

    op.drop_table("prompts")
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_index("ix_models_name_active")

    op.drop_table("models")
    op.drop_table("datasets")
