"""Shared fixtures: a fresh database per test on SQLite (a real file) and on PostgreSQL.

PostgreSQL and Redis are the real servers started by `tests/run.sh` (what `make test` runs); it
exports their URLs. Run plain `pytest` without them and those tests skip, unless
SELECTIT_TEST_REQUIRE_SERVICES=1 (set by tests/run.sh), where a missing server is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from selectit.cli import main
from selectit.store import db

ROOT = Path(__file__).resolve().parent.parent
#: The authors' rating prompts (`data/rating_prompt.txt` of Blue-Raincoat/SelectIT, commit 4813250), which
#: selectit does not ship: $SELECTIT_REFERENCE_PROMPTS, else the copy in the data folder beside the checkout.
#: The only file outside the repository a test may read; the tests that need it skip without it.
REFERENCE_PROMPTS = Path(os.environ.get("SELECTIT_REFERENCE_PROMPTS")
                         or ROOT.parent / "shared" / "data" / "reference_rating_prompts.txt")
DEMO_DATA = ROOT / "selectit" / "data" / "alpaca_en_demo.json"

POSTGRES_URL = os.environ.get("SELECTIT_TEST_POSTGRES_URL")
REDIS_URL = os.environ.get("SELECTIT_TEST_REDIS_URL")
REQUIRE_SERVICES = os.environ.get("SELECTIT_TEST_REQUIRE_SERVICES") == "1"


def require(url: str | None, what: str) -> str:
    if url:
        return url
    if REQUIRE_SERVICES:
        pytest.fail(f"{what} is not running; run the suite with `make test` (tests/run.sh)")
    pytest.skip(f"{what} not available; `make test` starts it")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped after the test."""
    admin_url = require(POSTGRES_URL, "PostgreSQL")
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    yield url
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'selectit.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request) -> str:
    """An empty database URL, once on SQLite and once on PostgreSQL."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    """An engine on a database migrated to head (`upgrade head`, never create_all)."""
    db.upgrade(db_url)
    eng = db.open_store(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def redis_url(worker_id: str) -> str:
    """The Redis server's URL, with a database of its own for each pytest-xdist worker: tests flush
    it to start without an earlier test's messages, which must not reach a test on another worker."""
    url = require(REDIS_URL, "Redis")
    index = 0 if worker_id == "master" else int(worker_id.removeprefix("gw")) + 1
    if index > 15:
        pytest.fail(f"Redis has 16 databases; run at most 15 pytest-xdist workers (this is {worker_id})")
    return url.rsplit("/", 1)[0] + f"/{index}"


@pytest.fixture
def cli(db_url: str):
    """Run a selectit command against the test database: cli("ingest", path, "--dataset", "d")."""
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Result:
        return runner.invoke(main, ["--db", db_url, *map(str, args)], input=input, catch_exceptions=False)

    return invoke


def reference_prompt_lines() -> list[str]:
    """The authors' rating prompts (`REFERENCE_PROMPTS`), one per line; the test skips without them."""
    if not REFERENCE_PROMPTS.is_file():
        pytest.skip(f"{REFERENCE_PROMPTS} is not there (the authors' rating prompts; set $SELECTIT_REFERENCE_PROMPTS)")
    with open(REFERENCE_PROMPTS, encoding="utf-8") as f:
        return f.readlines()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny Llama + tokenizer directory (tests/tiny_model.py), built once per test session (~5 s)."""
    from tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))
