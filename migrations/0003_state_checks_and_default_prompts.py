"""States checked in the database, and the built-in `default` prompt set stored by the migration.

- CHECK constraints on the state columns (`jobs.status`, `scores.status`, `prompts.layout`),
  named as `selectit.store.schema.NAMING_CONVENTION` names them. SQLite alters a table by copying it
  (batch mode); `alembic/env.py` turns foreign keys off meanwhile, so copying `jobs` does not
  cascade into `job_samples`.
- The `default` prompt set, unless the database already holds one: reads no longer create it.
  Its texts are frozen here (a migration must not import app code that changes later).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: (table, constraint name, column, allowed values) as of this revision.
STATE_CHECKS = (
    ("jobs", "ck_jobs_status", "status", ("queued", "running", "done", "failed")),
    ("scores", "ck_scores_status", "status", ("ok", "failed")),
    ("prompts", "ck_prompts_layout", "layout", ("reference", "shared-context")),
)

DEFAULT_SET = "default"
_HEAD = (
    "Below is an instruction for an AI assistant and the assistant's response.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n{output}\n\n"
)
_QUESTIONS = (
    "How well does the response follow the instruction? Rate it from 1 (poorly) to 5 (perfectly).",
    "Rate the accuracy of the response on a scale of 1 to 5, where 5 means fully correct.",
    "On a scale from 1 to 5, how helpful is the response to the person who gave the instruction?",
    "Score the overall quality of the response from 1 (very poor) to 5 (excellent).",
    "Considering correctness, completeness and clarity, rate the response from 1 to 5.",
)
DEFAULT_TEMPLATES = tuple(_HEAD + q + "\nAnswer with one digit.\nRating: " for q in _QUESTIONS)


def upgrade() -> None:
    for table, name, column, values in STATE_CHECKS:
        allowed = ", ".join(f"'{v}'" for v in values)
        with op.batch_alter_table(table) as batch_op:
            batch_op.create_check_constraint(op.f(name), f"{column} IN ({allowed})")

    prompts = sa.table("prompts", sa.column("id", sa.Integer), sa.column("set_name", sa.String),
                       sa.column("position", sa.Integer), sa.column("layout", sa.String),
                       sa.column("template", sa.Text), sa.column("text_hash", sa.String),
                       sa.column("scale", sa.Integer), sa.column("active", sa.Boolean))
    conn = op.get_bind()
    exists = conn.scalar(sa.select(sa.func.count()).select_from(prompts).where(prompts.c.set_name == DEFAULT_SET))
    if not exists:
        op.bulk_insert(prompts, [
            {"set_name": DEFAULT_SET, "position": i, "layout": "shared-context", "template": t,
             "text_hash": hashlib.sha256(t.encode("utf-8")).hexdigest(), "scale": 5, "active": True}
            for i, t in enumerate(DEFAULT_TEMPLATES)
        ])


def downgrade() -> None:
    # The default set stays: it may be scored already, and 0002 code creates it on demand anyway.
    for table, name, _column, _values in reversed(STATE_CHECKS):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_constraint(op.f(name), type_="check")
