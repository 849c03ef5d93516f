"""The guard suite's refusals through the Python API: each error case of tests/test_guard_*.py that
has a library equivalent is run through `selectit.open()` too, and raises a `SelectitError` whose
message is the CLI's `Error:` line (the CLI joins a message's lines into one).

A case is (CLI arguments, the same thing as a `Store` call); both run against their own copy of
the same store, so neither sees what the other did. Arguments only the API can give (a table in
memory, a bytes path, a seed that is no integer) raise a `SelectitError` too, and leave the store
as it was.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from guards import assert_one_error, invoke, snapshot, sqlite_path
from test_views import seed

import selectit
from selectit.ranking import Ranking
from selectit.errors import SelectitError
from selectit.store import db


@dataclass(frozen=True)
class Case:
    """`cli` and `api` get the paths of `files()` (name → path, made in a fresh directory) and
    the store's URL; `store`: "empty" (a new store), "seeded" (dataset `d`, prompt set `s`),
    or a URL template for a store that cannot be opened."""

    id: str
    cli: Callable[[dict[str, Path]], list[Any]]
    api: Callable[[selectit.Store, dict[str, Path]], Any]
    store: str = "empty"
    phrase: str = ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _files(tmp: Path) -> dict[str, Path]:
    """Every input file a case may name."""
    found: dict[str, Path] = {}

    def put(name: str, content: str | bytes) -> None:
        path = found[name] = tmp / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)

    put("good.json", json.dumps([{"instruction": "i", "output": "o"}]))
    put("deep.jsonl", json.dumps({"instruction": "i", "output": "o"}) + "\n" + "[" * 10_000 + "]" * 10_000 + "\n")
    put("none.json", "[]")
    put("wide.json", json.dumps([{"instruction": "i", "output": "o"}]).encode("utf-16"))
    put("cut.jsonl", '{"instruction": "i", "output": "o"}\n{"instruction": "a", "output": "b"\n')
    put("null.json", "[null]")
    put("bool.json", '[{"instruction": true, "output": "o"}]')
    put("ids.json", json.dumps([{"instruction": "i", "output": "o", "id": [1, 2]}]))
    put("history.json", json.dumps([{"instruction": "i", "output": "o", "history": '[["q", "a"]]'}]))
    put("p.txt", "Rate it.\n")
    put("input.txt", "Q: {instruction} {input}\\n{output}\\nRating: \n")
    put("junk.gguf", b"GGUF" + bytes(100))
    put("notes.db", "these are my notes, not a database\n" * 20)
    found["dir"] = tmp / "dir"
    found["dir"].mkdir()
    return found


def _ingest(name: str, dataset: str = "x") -> Case:
    return Case(f"ingest-{name}", lambda f: ["ingest", f[name], "--dataset", dataset],
                lambda s, f: s.ingest(f[name], dataset))


CASES = [
    # -- opening the store (test_guard_store)
    Case("a-text-file", lambda f: ["status"], lambda s, f: s.status(), store="sqlite:///{notes}",
         phrase="not a SQLite database"),
    Case("a-directory", lambda f: ["status"], lambda s, f: s.status(), store="sqlite:///{dir}", phrase="directory"),
    Case("mysql", lambda f: ["status"], lambda s, f: s.status(), store="mysql://u@localhost/x", phrase="sqlite"),
    Case("unknown-driver", lambda f: ["status"], lambda s, f: s.status(), store="postgresql+nosuchdriver://u@h/x",
         phrase="sqlite"),
    Case("bad-port", lambda f: ["status"], lambda s, f: s.status(), store="postgresql://u@h:99999999/x",
         phrase="bad part"),
    Case("no-server", lambda f: ["status"], lambda s, f: s.status(),
         store="postgresql://selectit@127.0.0.1:{port}/selectit", phrase="cannot connect"),
    Case("read-only", lambda f: ["ingest", f["good.json"], "--dataset", "x"],
         lambda s, f: s.ingest(f["good.json"], "x"),
         store="read-only", phrase="read-only"),
    # -- ingest (test_guard_ingest)
    _ingest("deep.jsonl"), _ingest("none.json"), _ingest("wide.json"), _ingest("cut.jsonl"), _ingest("null.json"),
    _ingest("bool.json"), _ingest("ids.json"), _ingest("history.json"),
    # -- names (test_guard_names)
    Case("name-dataset", lambda f: ["ingest", f["good.json"], "--dataset", "two\nlines"],
         lambda s, f: s.ingest(f["good.json"], "two\nlines"), phrase="name"),
    Case("name-prompt-set", lambda f: ["prompts", "import", f["p.txt"], "--set", " ", "--layout", "reference"],
         lambda s, f: s.import_prompts(f["p.txt"], " ", "reference"), phrase="name"),
    Case("name-selection", lambda f: ["select", "tab\there", "--dataset", "d", "--prompt-set", "s"],
         lambda s, f: s.select("tab\there", "d", ranking=Ranking(prompt_set="s")), store="seeded", phrase="name"),
    Case("name-model", lambda f: ["model", "add", "", "--source", f["junk.gguf"]],
         lambda s, f: s.add_model("", str(f["junk.gguf"])), phrase="name"),
    Case("name-zero-width", lambda f: ["ingest", f["good.json"], "--dataset", "a\u200bb"],
         lambda s, f: s.ingest(f["good.json"], "a\u200bb"), phrase="U+200B"),
    Case("name-no-break-space", lambda f: ["prompts", "import", f["p.txt"], "--set", "a\u00a0b", "--layout", "reference"],
         lambda s, f: s.import_prompts(f["p.txt"], "a\u00a0b", "reference"), phrase="U+00A0"),
    # -- registering (test_guard_registry)
    Case("prompt-input-line",
         lambda f: ["prompts", "import", f["input.txt"], "--set", "x", "--layout", "shared-context"],
         lambda s, f: s.import_prompts(f["input.txt"], "x", "shared-context"), phrase="a line of its own"),
    Case("junk-gguf", lambda f: ["model", "add", "j", "--source", f["junk.gguf"]],
         lambda s, f: s.add_model("j", str(f["junk.gguf"])), phrase="junk.gguf"),
    Case("model-weight", lambda f: ["model", "add", "j", "--source", f["junk.gguf"], "--weight=inf"],
         lambda s, f: s.add_model("j", str(f["junk.gguf"]), weight=float("inf")), phrase="--weight"),
    # -- reading and writing selections (test_guard_exports, test_guard_console)
    Case("export-the-store", lambda f: ["export", "--dataset", "d", "--prompt-set", "s", "--top-n", "2", "--out",
                                        f["store"]],
         lambda s, f: s.export(f["store"], dataset="d", ranking=Ranking(prompt_set="s"), top_n=2), store="seeded",
         phrase="curation database"),
    Case("random-zero", lambda f: ["select", "r1", "--dataset", "d", "--prompt-set", "s", "--random", "0"],
         lambda s, f: s.select("r1", "d", random=0.0), store="seeded", phrase="--random"),
    Case("random-inf", lambda f: ["select", "r1", "--dataset", "d", "--prompt-set", "s", "--random", "inf"],
         lambda s, f: s.select("r1", "d", random=float("inf")), store="seeded", phrase="--random"),
    Case("min-score-nan", lambda f: ["select", "v1", "--dataset", "d", "--prompt-set", "s", "--min-score=nan"],
         lambda s, f: s.select("v1", "d", ranking=Ranking(prompt_set="s"), min_score=float("nan")), store="seeded", phrase="finite"),
    Case("console-write", lambda f: ["sql", f"COPY (SELECT 1) TO '{f['dir']}/out.csv'"],
         lambda s, f: s.sql(f"COPY (SELECT 1) TO '{f['dir']}/out.csv'"), store="seeded"),
    Case("no-such-dataset", lambda f: ["rank", "--dataset", "nope", "--prompt-set", "s"],
         lambda s, f: s.rank_summary("nope", ranking=Ranking(prompt_set="s")), store="seeded", phrase="nope"),
]


def _store(case: Case, tmp: Path, files: dict[str, Path], port: int) -> str:
    """The URL of this side's store."""
    if case.store in ("empty", "seeded", "read-only"):
        url = f"sqlite:///{tmp / 'store.db'}"
        db.upgrade(url)
        if case.store == "seeded":
            engine = db.open_store(url)
            seed(engine)
            engine.dispose()
        files["store"] = sqlite_path(url)
        if case.store == "read-only":
            return f"sqlite:///file:{files['store']}?mode=ro&uri=true"
        return url
    return case.store.format(port=port, notes=files["notes.db"], dir=files["dir"])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_the_api_raises_the_cli_error_line(tmp_path: Path, case: Case) -> None:
    sides, port = {}, _free_port()  # one closed port: the message names it
    for side in ("cli", "api"):
        (tmp_path / side).mkdir()
        files = _files(tmp_path / side)
        sides[side] = (files, _store(case, tmp_path / side, files, port))
    files, url = sides["cli"]
    line = assert_one_error(invoke("--db", url, *case.cli(files)), case.phrase)
    files, url = sides["api"]
    with pytest.raises(SelectitError) as raised:
        with selectit.open(url) as store:
            case.api(store, files)
    message = " ".join(part.strip() for part in str(raised.value).splitlines() if part.strip())
    assert line == f"Error: {message}".replace(str(tmp_path / "api"), str(tmp_path / "cli")), (line, message)


def test_ingest_refuses_a_negative_limit(tmp_path: Path) -> None:
    data = tmp_path / "a.jsonl"
    data.write_text('{"instruction": "Say hi.", "input": "", "output": "Hi."}\n')
    with selectit.open(tmp_path / "ok.db") as store, pytest.raises(SelectitError, match="limit"):
        store.ingest(data, "d", limit=-1)


# ------------------------------------------------------------------ arguments only the API can give
def _frame(**columns: list[Any]) -> Any:
    import pandas as pd

    return pd.DataFrame(columns)


def _repeated_columns(arrow: bool = False) -> Any:
    """A table with two columns named output (pandas allows it; so does Arrow)."""
    import pandas as pd
    import pyarrow as pa

    names = ["instruction", "output", "output"]
    if arrow:
        return pa.Table.from_arrays([pa.array(["i"]), pa.array(["o"]), pa.array(["x"])], names=names)
    return pd.DataFrame([["i", "o", "x"]], columns=names)


def _table(**columns: list[Any]) -> Any:
    import pyarrow as pa

    return pa.table(columns)


# (id, the call, phrases its message holds). A table in memory is named as `<in-memory …>`, never
# as the temporary Parquet file it is read through, and no file-only hint (--format) is given.
# Each argument is refused before any ranking is read, so no call needs the store's prompt set.
API_ONLY = [
    ("table-unknown-columns", lambda s, f: s.ingest(_table(x=["a"]), "t"),
     ["<in-memory Table>: no columns selectit reads (columns ['x']", "rename the table's columns"]),
    ("table-map-names-no-column", lambda s, f: s.ingest(_table(instruction=["a"], output=["b"]), "t",
                                                        map="instruction=zz"),
     ["<in-memory Table>: --map instruction=zz names a column the table does not have"]),
    ("frame-first-record-hint", lambda s, f: s.ingest(_frame(question=["a"], output=["b"]), "t"),
     ["<in-memory DataFrame>, record 1: missing field 'instruction'", "instruction=question"]),
    ("table-without-rows", lambda s, f: s.ingest(_table(instruction=[], output=[]), "t"),
     ["<in-memory Table> holds no records", "give a table with at least one row"]),
    ("frame-repeated-columns", lambda s, f: s.ingest(_repeated_columns(), "t"),
     ["<in-memory DataFrame> has more than one column named 'output'"]),
    ("table-repeated-columns", lambda s, f: s.ingest(_repeated_columns(arrow=True), "t"),
     ["<in-memory Table> has more than one column named 'output'"]),
    ("frame-mixed-column", lambda s, f: s.ingest(_frame(instruction=["a", 1], output=["b", "c"]), "t"),
     ["<in-memory DataFrame>: cannot read it as a table", "column instruction"]),
    ("frame-history-text", lambda s, f: s.ingest(_frame(instruction=["a"], output=["b"], history=["[]x"]), "t"),
     ["<in-memory DataFrame>, record 1: field 'history' is not a list", "(got a string)"]),
    ("map-not-text", lambda s, f: s.ingest(f["good.json"], "t", map=5), ["--map", "got 5"]),
    ("dataset-name-none", lambda s, f: s.ingest(f["good.json"], None), ["the dataset name must be a string"]),
    ("export-bytes-path", lambda s, f: s.export(bytes(f["dir"] / "o.json"), dataset="d"),
     ["--out must be a path", "got b'"]),
    ("export-llamafactory-number", lambda s, f: s.export(f["dir"] / "o.json", dataset="d",
                                                         llamafactory=5), ["--llamafactory", "got 5"]),
    ("report-bytes-path", lambda s, f: s.report("d", bytes(f["dir"] / "r")), ["--out must be a path"]),
    ("prompts-bytes-path", lambda s, f: s.import_prompts(bytes(f["p.txt"]), "x", "reference"),
     ["the prompts file must be a path"]),
    ("seed-text", lambda s, f: s.select("r", "d", random=0.2, seed="x"),
     ["--seed must be a whole number", "got 'x'"]),
    ("seed-fraction", lambda s, f: s.select("r", "d", random=0.2, seed=1.5), ["--seed"]),
    ("top-n-text", lambda s, f: s.select("r", "d", top_n="5"), ["--top-n must be a positive count"]),
    ("top-n-fraction", lambda s, f: s.select("r", "d", top_n=2.5), ["--top-n"]),
    ("min-score-text", lambda s, f: s.select("r", "d", min_score="x"), ["--min-score"]),
    ("weight-text", lambda s, f: s.add_model("m", str(f["junk.gguf"]), weight="x"), ["--weight"]),
    ("max-tokens-text", lambda s, f: s.add_model("m", str(f["junk.gguf"]), max_tokens="x"), ["--max-tokens"]),
    ("sql-not-text", lambda s, f: s.sql(5), ["the SQL must be a string"]),
]


@pytest.mark.parametrize("call, phrases", [c[1:] for c in API_ONLY], ids=[c[0] for c in API_ONLY])
def test_bad_api_arguments_raise_a_selectit_error(tmp_path: Path, call: Callable[..., Any],
                                                  phrases: list[str]) -> None:
    files = _files(tmp_path)
    url = _store(Case("api", lambda f: [], lambda s, f: None, store="seeded"), tmp_path, files, 0)
    before = snapshot(url)
    with pytest.raises(SelectitError) as raised, selectit.open(url) as store:
        call(store, files)
    message = str(raised.value)
    for phrase in phrases:
        assert phrase in message, message
    assert "selectit-ingest-" not in message and "--format" not in message, message
    assert snapshot(url) == before
    assert not (files["dir"] / "o.json").exists() and not (files["dir"] / "r").exists()
