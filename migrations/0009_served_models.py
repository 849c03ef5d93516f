"""Models served by an OpenAI-compatible server, and partial cells of the top-k mode.

`models.endpoint`, `models.served_model`, `models.api_key_env` (NULL for local models; the API
key itself is never stored); `models.n_params` may be NULL (a server does not say its parameter
count: such a model needs `--weight` or `--params` to join the model-level fusion).
`scores.partial`: a label outside the server's top K counted as 0 (NULL for older cells).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("endpoint", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("served_model", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("api_key_env", sa.String(length=200), nullable=True))
        batch_op.alter_column("n_params", existing_type=sa.BigInteger(), nullable=True)
    with op.batch_alter_table("scores", schema=None) as batch_op:
        batch_op.add_column(sa.Column("partial", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scores", schema=None) as batch_op:
        batch_op.drop_column("partial")
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.alter_column("n_params", existing_type=sa.BigInteger(), nullable=False)
        batch_op.drop_column("api_key_env")
        batch_op.drop_column("served_model")
        batch_op.drop_column("endpoint")
