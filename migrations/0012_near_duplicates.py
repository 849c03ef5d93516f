"""Near-duplicate signature cells: `signature_configs` (one row per version of the MinHash
producer), `sample_signatures` (a sample's signature under a config, keyed by both) and
`signature_bands` (the LSH buckets the DuckDB self-join pairs candidates on); embedding cells:
`embedders`, `sample_embeddings` and the pairwise `similar_pairs` above a floor (`--diverse`).

Revision ID: 0012
Revises: 0010
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "signature_configs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("config_hash", sa.String(length=64), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_signature_configs"),
        sa.UniqueConstraint("config_hash", name="uq_signature_configs_config_hash"),
    )
    op.create_table(
        "sample_signatures",
        sa.Column("sample_id", sa.Integer(), nullable=False),
        sa.Column("config_id", sa.Integer(), nullable=False),
        sa.Column("norm_key", sa.BigInteger(), nullable=False),
        sa.Column("prompt_key", sa.BigInteger(), nullable=False),
        sa.Column("n_shingles", sa.Integer(), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False),
        sa.ForeignKeyConstraint(["config_id"], ["signature_configs.id"],
                                name="fk_sample_signatures_config_id_signature_configs"),
        sa.ForeignKeyConstraint(["sample_id"], ["samples.id"], name="fk_sample_signatures_sample_id_samples"),
        sa.PrimaryKeyConstraint("sample_id", "config_id", name="pk_sample_signatures"),
    )
    op.create_table(
        "signature_bands",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("config_id", sa.Integer(), nullable=False),
        sa.Column("band", sa.Integer(), nullable=False),
        sa.Column("bucket", sa.BigInteger(), nullable=False),
        sa.Column("sample_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["config_id"], ["signature_configs.id"],
                                name="fk_signature_bands_config_id_signature_configs"),
        sa.PrimaryKeyConstraint("id", name="pk_signature_bands"),
    )
    op.create_table(
        "embedders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("config_hash", sa.String(length=64), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_embedders"),
        sa.UniqueConstraint("config_hash", name="uq_embedders_config_hash"),
    )
    op.create_table(
        "sample_embeddings",
        sa.Column("sample_id", sa.Integer(), nullable=False),
        sa.Column("embedder_id", sa.Integer(), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False),
        sa.ForeignKeyConstraint(["embedder_id"], ["embedders.id"], name="fk_sample_embeddings_embedder_id_embedders"),
        sa.ForeignKeyConstraint(["sample_id"], ["samples.id"], name="fk_sample_embeddings_sample_id_samples"),
        sa.PrimaryKeyConstraint("sample_id", "embedder_id", name="pk_sample_embeddings"),
    )
    op.create_table(
        "similar_pairs",
        sa.Column("embedder_id", sa.Integer(), nullable=False),
        sa.Column("sample_a", sa.Integer(), nullable=False),
        sa.Column("sample_b", sa.Integer(), nullable=False),
        sa.Column("cosine", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["embedder_id"], ["embedders.id"], name="fk_similar_pairs_embedder_id_embedders"),
        sa.PrimaryKeyConstraint("embedder_id", "sample_a", "sample_b", name="pk_similar_pairs"),
    )


def downgrade() -> None:
    op.drop_table("similar_pairs")
    op.drop_table("sample_embeddings")
    op.drop_table("embedders")
    op.drop_table("signature_bands")
    op.drop_table("sample_signatures")
    op.drop_table("signature_configs")
