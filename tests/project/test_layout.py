"""The tests mirror the package: `tests/<wing>/test_<module>.py` for each module of a wing (the base
modules under `tests/base/`, the front — `api`, `status`, the CLI — under `tests/front/`), or the
module is listed below with the test files that cover it and why it has none of its own. The guard
suites (`tests/guards/`), the end-to-end runs (`tests/e2e/`) and the project's own checks
(`tests/project/`) have folders of their own."""

from __future__ import annotations

from pathlib import Path

from conftest import ROOT

PACKAGE, TESTS = ROOT / "selectit", ROOT / "tests"
FRONT = {"api", "status", "cli"}

#: module → where it is tested instead, and why.
COVERED_ELSEWHERE = {
    "cli/base.py": "every CLI test (the group, --db, the error line): e2e/test_cli_end_to_end.py, guards/",
    "cli/data.py": "ingest, datasets, demo through the CLI: io/test_ingest.py, e2e/test_cli_end_to_end.py",
    "cli/options.py": "the shared options, through the commands: base/test_ranking.py, scoring/test_engines.py",
    "cli/ranking.py": "rank, select, export, report, diagnose, sql: fusion/, io/test_export.py, guards/",
    "cli/scoring.py": "score, plan, worker: jobs/test_runner.py, jobs/test_load_failures.py, e2e/test_fleet.py; "
                      "its progress bar: jobs/test_progress.py",
    "contract.py": "the engine contract and names: scoring/test_architectures.py, guards/test_guard_names.py",
    "errors.py": "the error lines, through every guard suite: guards/test_guard_api.py",
    "formulas.py": "the arithmetic checked against the SQL views: fusion/test_views.py, fusion/test_health.py",
    "timing.py": "`score -v`'s breakdown: scoring/test_speed.py; TimeLeft: jobs/test_progress.py",
    "settings.py": "Settings.from_env and its errors: jobs/test_runner.py, e2e/test_fleet.py",
    "fusion/console.py": "the read-only console: guards/test_guard_console.py",
    "fusion/coverage.py": "coverage through rank and status: fusion/test_views.py, front/test_status.py",
    "fusion/errors.py": "two exception classes, raised through fusion/test_views.py",
    "fusion/extensions.py": "DuckDB's extensions offline, through every fusion test",
    "fusion/formula_sql.py": "the formulas worked by hand: fusion/test_views.py",
    "fusion/health_sql.py": "rater health: fusion/test_health.py",
    "fusion/params.py": "the resolved Ranking: base/test_ranking.py, fusion/test_views.py",
    "fusion/session.py": "the ranking recipe, through rank/select/export: front/test_api.py, fusion/test_selection.py",
    "fusion/store_attach.py": "the read-only attach: guards/test_guard_console.py, e2e/test_concurrent_writes.py",
    "io/card.py": "the dataset card and LLaMA-Factory entry: io/test_export.py",
    "io/export_files.py": "each export format: io/test_export.py, io/test_records.py",
    "io/json_text.py": "JSON lists, through ingest: io/test_ingest.py, guards/test_hostile_inputs.py",
    "io/readers.py": "every input format: io/test_ingest.py, io/test_export.py, guards/test_input_guard.py",
    "jobs/cells.py": "cell writes, through the runner: jobs/test_runner.py",
    "jobs/counts.py": "job counts and rates: front/test_status.py",
    "jobs/holders.py": "dead holders: front/test_status.py, jobs/test_runner.py",
    "jobs/leases.py": "claims, releases, expired leases: jobs/test_runner.py",
    "jobs/planner.py": "missing cells and jobs: jobs/test_runner.py, jobs/test_estimate.py",
    "jobs/ticks.py": "the fleet's clock: e2e/test_fleet.py",
    "report/data.py": "what the report shows: report/test_build.py",
    "report/page.py": "the HTML page: report/test_build.py",
    "report/sections.py": "the sections: report/test_build.py",
    "scoring/labels.py": "label token ids: scoring/test_registry.py, scoring/test_architectures.py",
    "scoring/loading.py": "sources, GGUF, tokenizers: scoring/test_registry.py, scoring/test_speed.py",
    "scoring/preparation.py": "prompt rendering and cuts: scoring/test_torch_engine.py, scoring/test_openai_engine.py",
    "store/lookups.py": "names to ids, through every command: guards/test_guard_names.py",
    "store/schema.py": "the ORM against the migrations: store/test_db.py",
    "store/sqlite_locks.py": "one SQLite per store file: e2e/test_concurrent_writes.py",
    "store/signatures.py": "signature cells and bands: fusion/test_dedup.py",
    "results.py": "the values the Store returns, through front/test_api.py",
    "cli/audit.py": "selectit audit through the CLI: fusion/test_audit.py",
    "io/audit.py": "the known-bad twins: fusion/test_audit.py",
    "io/labels.py": "a user's labels read and stored: fusion/test_audit.py",
    "io/file_bytes.py": "encodings refused: guards/test_hostile_inputs.py, io/test_ingest.py",
    "fusion/labels.py": "agreement with a user's labels: fusion/test_audit.py",
    "report/audit.py": "the audit's report section: fusion/test_audit.py",
    "workers/app.py": "the Celery app with real workers: e2e/test_fleet.py",
    "workers/control.py": "the control loop with real workers: e2e/test_fleet.py",
}


def _modules() -> dict[str, str]:
    """module path → the test file it should have."""
    found = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        rel = p.relative_to(PACKAGE)
        if p.name in ("__init__.py", "__main__.py") or rel.parts[0] == "data":
            continue
        wing = rel.parts[0] if len(rel.parts) > 1 else ("front" if rel.stem in FRONT else "base")
        found[str(rel)] = f"{'front' if wing == 'cli' else wing}/test_{rel.stem}.py"
    for p in sorted((ROOT / "workers").glob("*.py")):
        if p.name != "__init__.py":
            found[f"workers/{p.name}"] = f"e2e/test_{p.stem}.py"
    return found


def test_every_module_has_its_test_file_or_a_reason() -> None:
    missing = {m: t for m, t in _modules().items() if not (TESTS / t).exists() and m not in COVERED_ELSEWHERE}
    assert not missing, f"add the test file, or list the module in COVERED_ELSEWHERE with a reason: {missing}"


def test_no_reason_outlives_its_module_or_hides_a_test_file() -> None:
    modules = _modules()
    stale = sorted(set(COVERED_ELSEWHERE) - set(modules))
    doubled = sorted(m for m in COVERED_ELSEWHERE if m in modules and (TESTS / modules[m]).exists())
    assert not stale and not doubled, f"no such module: {stale}; has its own test file: {doubled}"


def test_every_test_file_sits_in_a_folder() -> None:
    loose = sorted(p.name for p in TESTS.glob("test_*.py"))
    assert not loose, f"move these under tests/<wing>/ (or guards/, e2e/, project/): {loose}"


def test_test_file_names_are_unique() -> None:
    """Test modules import each other's helpers by module name (pytest's `pythonpath`)."""
    names = [p.name for p in TESTS.rglob("test_*.py")]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
