"""What exports, reports and init may write, replace or delete, through the CLI on SQLite and PostgreSQL.

Rules under test (docs/safety.md): every file goes through one guarded writer that
checks all targets first; a command replaces only the file the user named (never the store's files,
an SQLite database or an ingested source without --overwrite) and the files it wrote itself for the
same entry (the directory's manifest); nothing else is replaced or deleted; init never turns another
application's database into a store; an ingest is one transaction.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
import yaml
from click.testing import CliRunner
from guards import snapshot
from test_export import score_everything, write_alpaca_json

from selectit.cli import main
from selectit.io.writer import MANIFEST
from selectit.store import db


# ---------------------------------------------------------------------------------------- helpers
def invoke(*args: object):  # noqa: ANN201
    """Run the CLI catching everything, so a traceback is a failed assertion, not a crash."""
    return CliRunner().invoke(main, [str(a) for a in args])


def ok(result) -> str:  # noqa: ANN001
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result.output


def one_error(result, *phrases: str) -> str:  # noqa: ANN001
    """Exit 1 with one `Error: …` line holding each phrase, and no traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"traceback: {result.exception!r}\n{result.output}")
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(directory: Path) -> dict[str, str]:
    """Every entry under `directory` (not following links): file → sha256, link → its target."""
    out = {}
    for p in sorted(directory.rglob("*")):
        rel = str(p.relative_to(directory))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = digest(p)
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = "special"
    return out


def front_matter(card: Path) -> dict:
    text = card.read_text(encoding="utf-8")
    return yaml.safe_load(text.split("---\n", 2)[1])


def settle(db_url: str) -> None:
    """Move a SQLite store's WAL into the database file, so its bytes stay put while only read."""
    url = sa.make_url(db_url)
    if url.get_backend_name() == "sqlite":
        con = sqlite3.connect(url.database)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.close()


def make_store(db_url: str, source: Path) -> Path:
    """Dataset `d` ingested from `source` (an Alpaca JSON file), scored, frozen as selection `all`."""
    write_alpaca_json(source)
    ok(invoke("--db", db_url, "ingest", source, "--dataset", "d"))
    score_everything(db_url)
    ok(invoke("--db", db_url, "select", "all", "--dataset", "d", "--prompt-set", "s", "--top", "1"))
    settle(db_url)
    return source


@pytest.fixture
def store(db_url: str, tmp_path: Path) -> str:
    """A store (SQLite and PostgreSQL) with the selection `all` of dataset `d` (4 Alpaca records)."""
    make_store(db_url, tmp_path / "alpaca.json")
    return db_url


def export(db_url: str, *args: object):  # noqa: ANN201
    return invoke("--db", db_url, "export", "--selection", "all", *args)


# ------------------------------------------------------- 22.1 the report owns only its own files
def test_report_keeps_other_files_and_the_store_inside_its_directory(tmp_path: Path, monkeypatch) -> None:
    rep = tmp_path / "rep"
    rep.mkdir()
    url = f"sqlite:///{rep / 'store.db'}"  # the curation database inside the report directory
    make_store(url, tmp_path / "alpaca.json")
    store_bytes = digest(rep / "store.db")
    monkeypatch.chdir(tmp_path)
    old = os.umask(0o022)
    try:
        # rep holds the store and no report: refused, nothing written
        one_error(invoke("--db", url, "report", "--dataset", "d", "--prompt-set", "s", "--out", rep),
                  "not a selectit report")
        fresh = tmp_path / "fresh"
        ok(invoke("--db", url, "report", "--dataset", "d", "--prompt-set", "s", "--out", fresh))
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o755  # the usual mode, not mkdtemp's 0700
        manifest = json.loads((fresh / MANIFEST).read_text())["files"]
        assert "index.html" in manifest and all(r["entry"] == "report" for r in manifest.values())
        (fresh / "notes.txt").write_text("mine")
        ok(invoke("--db", url, "report", "--dataset", "d", "--prompt-set", "s", "--out", fresh, "--alpha", "0.5"))
        assert (fresh / "notes.txt").read_text() == "mine"  # a rerun replaces only what the report wrote
        # the store's own directory, made a report directory by a manifest, keeps the store
        (rep / MANIFEST).write_text(json.dumps({"files": {}}))
        ok(invoke("--db", url, "report", "--dataset", "d", "--prompt-set", "s", "--out", rep))
        ok(invoke("--db", url, "report", "--dataset", "d", "--prompt-set", "s", "--out", rep))
        assert digest(rep / "store.db") == store_bytes and (rep / "index.html").is_file()
        ok(invoke("--db", url, "status"))
        assert snapshot(url)["datasets"]  # still the same store, not a new empty one
        for where in (".", "..", tmp_path):  # the working directory and its ancestors: never
            one_error(invoke("--db", url, "report", "--dataset", "d", "--prompt-set", "s", "--out", where),
                      "working directory")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["alpaca.json", "fresh", "rep"]
    finally:
        os.umask(old)


# ------------------------------------------------------- 22.2 hf-dataset replaces its own files only
def test_hf_dataset_replaces_only_its_own_files_and_never_through_a_link(store: str, tmp_path: Path) -> None:
    from selectit.io.readers import datasets_offline

    hf = datasets_offline()
    ds = tmp_path / "ds"
    ok(export(store, "--out", ds, "--format", "hf-dataset"))
    (ds / "keep.db").write_bytes(b"SQLite format 3\x00precious")  # the user's file inside the dataset
    ok(export(store, "--out", ds, "--format", "hf-dataset", "--with-scores"))  # its own files: replaced
    assert (ds / "keep.db").read_bytes() == b"SQLite format 3\x00precious"
    assert "s_model" in hf.load_from_disk(str(ds)).column_names
    link = tmp_path / "link"
    link.symlink_to(ds)
    before = tree(ds)
    one_error(export(store, "--out", link, "--format", "hf-dataset"), "symbolic link")
    assert tree(ds) == before and link.is_symlink()
    theirs = tmp_path / "theirs"  # a saved dataset selectit did not write
    hf.Dataset.from_dict({"text": ["a"]}).save_to_disk(str(theirs))
    before = tree(theirs)
    one_error(export(store, "--out", theirs, "--format", "hf-dataset"), "not written by selectit", "--overwrite")
    assert tree(theirs) == before
    ok(export(store, "--out", theirs, "--format", "hf-dataset", "--overwrite"))
    assert len(hf.load_from_disk(str(theirs))) == 4


# ------------------------------------------------------- 22.3 the card goes through the writer
def test_card_paths_are_checked_before_the_data_is_written(store: str, tmp_path: Path) -> None:
    victim = tmp_path / "x.db"
    victim.write_bytes(b"precious")
    out = tmp_path / "out.json"
    card = tmp_path / "out.json.README.md"
    card.symlink_to(victim)
    one_error(export(store, "--out", out, "--format", "alpaca-json"), "symbolic link")
    assert victim.read_bytes() == b"precious" and not out.exists()
    card.unlink()
    os.mkfifo(card)  # would hang a plain open()
    one_error(export(store, "--out", out, "--format", "alpaca-json"), "not a regular file")
    assert not out.exists()
    card.unlink()
    card.mkdir()
    one_error(export(store, "--out", out, "--format", "alpaca-json"), "not a regular file")
    assert not out.exists()
    card.rmdir()
    lf = tmp_path / "lf"
    lf.mkdir()
    (lf / "dataset_info.json").write_bytes(b'{"caf\xe9": {}}')  # Latin-1, not UTF-8
    one_error(export(store, "--out", f"{lf}/", "--format", "sharegpt", "--llamafactory"), "not UTF-8")
    assert sorted(p.name for p in lf.iterdir()) == ["dataset_info.json"]  # nothing written, no manifest


# ------------------------------------------------------- 22.4 WAL names from the resolved store path
def test_store_reached_through_a_symlink_keeps_its_wal(tmp_path: Path) -> None:
    real = tmp_path / "store.db"
    make_store(f"sqlite:///{real}", tmp_path / "alpaca.json")
    link = tmp_path / "link.db"
    link.symlink_to(real)
    url = f"sqlite:///{link}"
    for name in ("store.db-wal", "store.db-shm", "store.db-journal"):
        one_error(export(url, "--out", tmp_path / name), "curation database")
        assert not (tmp_path / name).exists() or not (tmp_path / name).read_bytes().startswith(b"[")
    assert snapshot(url)["selections"]


# ------------------------------------------------------- 22.5 empty --out, the ingested source
def test_empty_out_is_an_error_and_the_source_file_needs_overwrite(store: str, tmp_path: Path,
                                                                   monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").write_text("the user's readme")
    one_error(export(store, "--out", ""), "--out is empty")
    one_error(invoke("--db", store, "report", "--dataset", "d", "--out", ""), "--out is empty")
    assert (tmp_path / "README.md").read_text() == "the user's readme" and not (tmp_path / "data.json").exists()
    source = tmp_path / "alpaca.json"
    before = digest(source)
    one_error(export(store, "--out", source), "ingested source", "--overwrite")
    assert digest(source) == before
    ok(export(store, "--out", source, "--format", "jsonl", "--overwrite"))
    assert len(source.read_text().splitlines()) == 4


# ------------------------------------------------------- 22.6 init on another application's database
def test_init_refuses_a_foreign_sqlite_database(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    con.execute("INSERT INTO customers (name) VALUES ('Ada')")
    con.commit()
    con.close()
    before = digest(path)
    url = f"sqlite:///{path}"
    one_error(invoke("--db", url, "init"), "another application", "customers")
    line = one_error(invoke("--db", url, "status"), "another application", "customers")
    assert "`selectit" not in line  # no advice to turn it into a store with init
    assert digest(path) == before


def test_init_refuses_a_foreign_postgresql_database(postgres_url: str) -> None:
    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE invoices (id serial PRIMARY KEY, total numeric)")
    engine.dispose()
    before = snapshot(postgres_url)
    one_error(invoke("--db", postgres_url, "init"), "another application", "invoices")
    assert snapshot(postgres_url) == before == {"invoices": []}


# ------------------------------------------------------- 22.7 one transaction per ingest
def test_a_parquet_file_corrupt_in_a_middle_row_group_commits_nothing(engine, db_url: str, tmp_path: Path,
                                                                       monkeypatch) -> None:
    from selectit.io import ingest
    from selectit.io import readers as formats

    monkeypatch.setattr(ingest, "CHUNK", 5)  # the rows before the bad group reach the database first
    monkeypatch.setattr(formats, "CHUNK", 5)
    rows = [{"instruction": f"Say {i} now", "input": "", "output": f"The number {i}."} for i in range(30)]
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=10, compression="NONE")
    column = pq.ParquetFile(path).metadata.row_group(1).column(2)
    data = bytearray(path.read_bytes())
    data[column.data_page_offset + 5:column.data_page_offset + 60] = b"\xff" * 55
    path.write_bytes(bytes(data))
    before = snapshot(db_url)
    result = invoke("--db", db_url, "ingest", path, "--dataset", "p")
    assert result.exit_code != 0
    assert snapshot(db_url) == before


# ------------------------------------------------------- 17.1/17.2 exports named after their entry
def test_two_exports_into_one_directory_keep_their_own_files(store: str, tmp_path: Path) -> None:
    lf = tmp_path / "LLaMA-Factory" / "data"
    lf.mkdir(parents=True)
    (lf / "README.md").write_text("LLaMA-Factory's own readme")
    (lf / "dataset_info.json").write_text(json.dumps({"alpaca_en_demo": {"file_name": "alpaca_en_demo.json"}}))
    ok(export(store, "--out", f"{lf}/", "--format", "sharegpt", "--llamafactory", "selective_alpaca"))
    ok(invoke("--db", store, "export", "--dataset", "d", "--prompt-set", "s", "--top-n", "3", "--out", lf,
              "--format", "alpaca-json", "--llamafactory", "top3"))
    assert (lf / "README.md").read_text() == "LLaMA-Factory's own readme"
    info = json.loads((lf / "dataset_info.json").read_text())
    assert set(info) == {"alpaca_en_demo", "selective_alpaca", "top3"}
    for name, n, key in (("selective_alpaca", 4, "conversations"), ("top3", 3, "instruction")):
        entry = info[name]
        data = lf / entry["file_name"]
        assert entry["file_name"] == f"{name}.json"
        assert hashlib.sha1(data.read_bytes()).hexdigest() == entry["file_sha1"]
        records = json.loads(data.read_text())
        assert len(records) == n and all(key in r for r in records)
        assert front_matter(lf / f"{name}.README.md")["selectit"]["data_file"] == f"{name}.json"
    # the same entry again: its own files are replaced
    ok(export(store, "--out", f"{lf}/", "--format", "sharegpt", "--llamafactory", "selective_alpaca"))
    # a file the export did not write (or that changed since) is refused, unless --overwrite
    (lf / "top3.json").write_text("[]\n")
    before = tree(lf)
    one_error(invoke("--db", store, "export", "--dataset", "d", "--prompt-set", "s", "--top-n", "3", "--out", lf,
                     "--format", "alpaca-json", "--llamafactory", "top3"), "top3.json", "--overwrite")
    assert tree(lf) == before
    ok(invoke("--db", store, "export", "--dataset", "d", "--prompt-set", "s", "--top-n", "3", "--out", lf,
              "--format", "alpaca-json", "--llamafactory", "top3", "--overwrite"))
    assert len(json.loads((lf / "top3.json").read_text())) == 3


# ------------------------------------------------------- 17.3 --out DIR/ for saved datasets
def test_hf_dataset_and_saved_dataset_originals_go_into_a_trailing_slash_directory(db_url: str,
                                                                                   tmp_path: Path) -> None:
    from selectit.io.readers import datasets_offline

    hf = datasets_offline()
    ok(invoke("--db", db_url, "init"))
    saved = tmp_path / "saved"
    hf.Dataset.from_list([{"instruction": f"Do {i}.", "input": "", "output": f"Done {i}."} for i in range(3)]
                         ).save_to_disk(str(saved))
    ok(invoke("--db", db_url, "ingest", saved, "--dataset", "d"))
    score_everything(db_url)
    ok(invoke("--db", db_url, "select", "all", "--dataset", "d", "--prompt-set", "s", "--top", "1"))
    out = tmp_path / "out"
    ok(export(db_url, "--out", f"{out}/", "--format", "hf-dataset"))
    assert len(hf.load_from_disk(str(out / "all"))) == 3 and (out / "all" / "README.md").is_file()
    ok(export(db_url, "--out", f"{out}/", "--format", "hf-dataset"))  # again: its own files
    orig = tmp_path / "orig"
    ok(export(db_url, "--out", f"{orig}/"))  # the default: original, a saved dataset
    assert sorted(hf.load_from_disk(str(orig / "all"))["instruction"]) == [f"Do {i}." for i in range(3)]


# ------------------------------------------------------- 17.4 cards without the user's paths
def test_card_records_file_names_and_hashes_and_paths_only_when_asked(store: str, tmp_path: Path) -> None:
    source = tmp_path / "alpaca.json"
    out = tmp_path / "sel.jsonl"
    ok(export(store, "--out", out, "--format", "jsonl"))
    card = out.with_name(out.name + ".README.md")
    [src] = front_matter(card)["selectit"]["source_files"]
    assert src["file"] == "alpaca.json" and src["sha256"] == digest(source) and "path" not in src
    assert str(tmp_path) not in card.read_text(encoding="utf-8")
    ok(export(store, "--out", out, "--format", "jsonl", "--card-paths"))
    [src] = front_matter(card)["selectit"]["source_files"]
    assert src["path"] == str(source)


# ------------------------------------------------------- every writing command against traps
def test_every_writing_command_leaves_foreign_files_the_store_and_links_alone(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    url = f"sqlite:///{out / 'store.db'}"  # the store inside the output directory
    make_store(url, tmp_path / "alpaca.json")
    foreign = out / "foreign.db"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE t (x)")
    con.execute("INSERT INTO t VALUES ('keep me')")
    con.commit()
    con.close()
    (out / "trap.json.README.md").symlink_to(foreign)  # a card path leading to the foreign database
    (out / "wal.json").symlink_to(out / "store.db-wal")  # an --out leading to the store's WAL
    (out / "all.README.md").symlink_to(foreign)  # the card name a directory export would use
    watched = {p: digest(p) for p in (out / "store.db", foreign)}
    links = {p: os.readlink(p) for p in out.iterdir() if p.is_symlink()}
    refusals = [
        (["export", "--selection", "all", "--out", out / "trap.json", "--format", "jsonl"], "symbolic link"),
        (["export", "--selection", "all", "--out", out / "wal.json"], "curation database"),
        (["export", "--selection", "all", "--out", out / "store.db"], "curation database"),
        (["export", "--selection", "all", "--out", foreign, "--format", "jsonl"], "SQLite database"),
        (["export", "--selection", "all", "--out", out / "ds", "--format", "hf-dataset", "--llamafactory"],
         "--llamafactory"),
        (["report", "--dataset", "d", "--prompt-set", "s", "--out", out], "not a selectit report"),
    ]
    for fmt in ("alpaca-json", "jsonl", "sharegpt", "messages", "parquet", "original"):
        refusals.append((["export", "--selection", "all", "--out", f"{out}/", "--format", fmt], "symbolic link"))
    for args, phrase in refusals:
        one_error(invoke("--db", url, *args), phrase)
    one_error(invoke("--db", f"sqlite:///{foreign}", "init"), "another application", "t")
    # what may be written: new files beside the traps, none of them touched
    ok(invoke("--db", url, "export", "--selection", "all", "--out", f"{out}/", "--format", "hf-dataset"))
    ok(invoke("--db", url, "export", "--selection", "all", "--out", out / "sel.parquet", "--format", "parquet"))
    ok(invoke("--db", url, "report", "--dataset", "d", "--prompt-set", "s", "--out", out / "report"))
    assert {p: digest(p) for p in watched} == watched
    assert {p: os.readlink(p) for p in out.iterdir() if p.is_symlink()} == links
    with sqlite3.connect(foreign) as con:
        assert con.execute("SELECT x FROM t").fetchall() == [("keep me",)]
    assert not (out / "trap.json").exists() and not (out / "all.jsonl").exists()


# ------------------------------------------------------- 17.8 a missing extra is one Error line
@pytest.mark.parametrize(("module", "extra", "args"), [
    ("matplotlib", "report", ["report", "--dataset", "d", "--prompt-set", "s", "--out", "rep"]),
    ("datasets", "hf", ["export", "--selection", "all", "--out", "ds", "--format", "hf-dataset"]),
])
def test_a_missing_optional_dependency_names_its_extra(tmp_path: Path, module: str, extra: str, args: list) -> None:
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'store.db'}"
    make_store(url, tmp_path / "alpaca.json")
    # The module is absent for this process: `import module` raises ModuleNotFoundError, as without the extra.
    code = (f"import sys; sys.modules[{module!r}] = None; from selectit.cli import run; "
            f"sys.argv = ['selectit'] + sys.argv[1:]; run()")
    proc = subprocess.run([sys.executable, "-c", code, "--db", url, *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: this needs "), lines
    assert module in lines[0] and f"`pip install 'selectit[{extra}]'`" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("store.db")) == ["alpaca.json"]


# ------------------------------------------------------- 17.9 a partly scored dataset says so
def test_a_partly_scored_dataset_warns_and_require_complete_refuses(store: str, tmp_path: Path) -> None:
    from selectit.store.schema import Sample, Score

    engine = db.open_store(store)
    with engine.begin() as conn:
        first = conn.execute(sa.select(sa.func.min(Sample.id))).scalar_one()
        conn.execute(sa.delete(Score).where(Score.sample_id == first))  # 3 of the 4 samples stay rankable
    engine.dispose()
    out = tmp_path / "half.json"
    common = ["--dataset", "d", "--prompt-set", "s", "--top", "0.5"]
    for args in (["export", *common, "--out", out, "--format", "jsonl"], ["select", "half", *common],
                 ["rank", *common]):
        result = invoke("--db", store, *args)
        ok(result)
        warnings = [line for line in result.output.splitlines() if line.startswith("Warning:")]
        assert warnings == [
            "Warning: only 3 of 4 samples of d are rankable (1 with missing cells, 0 with failed cells), and the "
            "selection is taken from those; finish scoring with `selectit score --dataset d`"], result.output
    assert len(out.read_text().splitlines()) == 1  # floor(0.5 × 3)
    before = snapshot(store)
    for args in (["export", *common, "--out", tmp_path / "no.json"], ["select", "never", *common],
                 ["rank", *common]):
        one_error(invoke("--db", store, *args, "--require-complete"), "only 3 of 4 samples", "--require-complete")
    assert not (tmp_path / "no.json").exists() and snapshot(store) == before
