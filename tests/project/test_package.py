"""The package's own shape: namespaced parts, checked states, and migrations that upgrade old data.

The wheel itself is tried by tests/wheel_smoke.sh (a full `tests/run.sh` runs it).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import ROOT

from selectit.contract import CellStatus, JobStatus, Layout
from selectit.scoring import registry
from selectit.store import db
from selectit.store.schema import Job, Prompt


def test_bundled_parts_resolve_under_the_selectit_namespace() -> None:
    cfg = db.alembic_config("sqlite:///x.db")
    assert Path(cfg.get_main_option("script_location")) == ROOT / "alembic"
    assert Path(cfg.get_main_option("version_locations")) == ROOT / "migrations"
    assert importlib.util.find_spec("selectit.workers.app") is not None
    assert importlib.util.find_spec("selectit.migrations") is not None


def test_states_read_back_as_contract_enums(engine) -> None:
    with db.session_scope(engine) as s:
        prompts = registry.active_prompts(s, registry.DEFAULT_PROMPT_SET)
        assert prompts and all(p.layout is Layout.SHARED_CONTEXT for p in prompts)


@pytest.mark.parametrize("table,column,value", [("jobs", "status", "paused"), ("scores", "status", "maybe"),
                                                ("prompts", "layout", "sideways")])
def test_the_database_refuses_an_unknown_state(engine, table: str, column: str, value: str) -> None:
    with engine.begin() as conn:  # rows valid in every other respect, written around the ORM
        conn.exec_driver_sql("INSERT INTO models (name, source, fingerprint, dtype, n_params, label_ids, "
                             "max_tokens, active) VALUES ('m', 's', 'f', 'float32', 1, '{}', 8, true)")
        conn.exec_driver_sql("INSERT INTO samples (content_hash, instruction, input, output, n_chars) "
                             "VALUES ('h', 'i', '', 'o', 2)")
    model_id = 1
    rows = {
        "jobs": "INSERT INTO jobs (model_id, sample_ids, prompt_ids, n_cells, est_tokens, status, attempts) "
                f"VALUES ({model_id}, '[]', '[]', 0, 0, '{{v}}', 0)",
        "scores": "INSERT INTO scores (sample_id, model_id, prompt_id, truncated, status, attempts) "
                  f"VALUES (1, {model_id}, 1, false, '{{v}}', 1)",
        "prompts": "INSERT INTO prompts (set_name, position, layout, template, text_hash, scale, active) "
                   "VALUES ('x', 0, '{v}', 't', 'h', 5, true)",
    }
    with pytest.raises(sa.exc.IntegrityError, match=f"ck_{table}_{column}"):
        with engine.begin() as conn:
            conn.exec_driver_sql(rows[table].format(v=value))
    allowed = {"jobs": JobStatus.DONE, "scores": CellStatus.FAILED, "prompts": Layout.REFERENCE}[table]
    with engine.begin() as conn:
        conn.exec_driver_sql(rows[table].format(v=allowed.value))


def test_upgrade_from_0002_keeps_open_jobs_and_adds_the_default_prompt_set(db_url: str) -> None:
    db.upgrade(db_url, "0002")
    engine = db.make_engine(db_url)
    with engine.begin() as conn:  # an open job of an older selectit, with its member rows
        conn.exec_driver_sql("INSERT INTO models (id, name, source, fingerprint, dtype, n_params, label_ids, "
                             "max_tokens, active) VALUES (1, 'm', 's', 'f', 'float32', 1, '{}', 8, true)")
        conn.exec_driver_sql("INSERT INTO jobs (id, model_id, sample_ids, prompt_ids, n_cells, est_tokens, "
                             "status, attempts) VALUES (7, 1, '[1, 2]', '[3]', 2, 0, 'queued', 0)")
        conn.exec_driver_sql("INSERT INTO job_samples (job_id, sample_id) VALUES (7, 1), (7, 2)")
        conn.exec_driver_sql("INSERT INTO job_prompts (job_id, prompt_id) VALUES (7, 3)")
    db.upgrade(db_url)
    assert db.current_revision(engine) == db.head_revision()
    with db.session_scope(engine) as s:
        assert s.scalar(sa.select(Job.status).where(Job.id == 7)) is JobStatus.QUEUED
        assert s.scalar(sa.text("SELECT count(*) FROM job_samples WHERE job_id = 7")) == 2
        assert s.scalar(sa.text("SELECT count(*) FROM job_prompts WHERE job_id = 7")) == 1
        stored = [p.template for p in registry.active_prompts(s, registry.DEFAULT_PROMPT_SET)]
    assert stored == list(registry.DEFAULT_TEMPLATES)  # the migration's frozen copy is today's set
    engine.dispose()


def test_upgrade_keeps_a_default_set_the_user_replaced(sqlite_url: str) -> None:
    db.upgrade(sqlite_url, "0002")
    engine = db.make_engine(sqlite_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO prompts (set_name, position, layout, template, text_hash, scale, active) "
                             "VALUES ('default', 0, 'reference', 'Mine.\n', 'h', 3, true)")
    db.upgrade(sqlite_url)
    with db.session_scope(engine) as s:
        assert [p.template for p in s.scalars(sa.select(Prompt))] == ["Mine.\n"]
    engine.dispose()


def test_init_stores_the_default_set_and_listing_prompts_writes_nothing(cli, db_url: str) -> None:
    assert cli("init").exit_code == 0
    engine = db.make_engine(db_url)
    with engine.begin() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM prompts WHERE set_name = 'default'").scalar() == 5
        conn.exec_driver_sql("DELETE FROM prompts")
    listing = cli("prompts")
    assert listing.exit_code == 0 and "default" not in listing.output
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM prompts").scalar() == 0  # a read wrote nothing
    assert cli("init").exit_code == 0  # init puts the built-in set back
    assert "default" in cli("prompts").output
    engine.dispose()
