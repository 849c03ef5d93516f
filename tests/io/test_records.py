"""Conversations kept whole through export, and every export format read back as the same samples.

Through the CLI (and the Python API where it applies), on SQLite and on PostgreSQL: an Alpaca file
(with inputs, a system prompt, LLaMA-Factory's history), a ShareGPT file and a messages file (a
tool turn, a conversation that ends with a user turn) are ingested, rated (cells inserted
directly), selected whole, exported in each format, and ingested again into the same dataset:
every record is a duplicate (`new 0`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_export import ALPACA, MESSAGES, SHAREGPT, llamafactory_examples, ok, score_everything, write_jsonl

import selectit
from selectit.ranking import Ranking
from selectit.api import init
from selectit.contract import EXPORT_FORMATS
from selectit.errors import SelectitError
from selectit.io.records import content_hash

#: Alpaca records with what a conversation format merges or a flat one would lose.
ALPACA_TURNS = [
    *ALPACA,  # inputs, \r\n, decomposed accents
    {"instruction": "Summarise.", "input": "A long text.\nTwo lines.", "output": "Short.",
     "system": "You summarise."},
    {"instruction": "And in French?", "input": "Bonjour", "output": "Hello.", "system": "You translate.",
     "history": [["Translate 'Hallo'.", "Hello."], ["Again?", "Hello again."]]},
]
#: A conversation that ends with a user turn (rated through its last assistant turn).
TRAILING = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                         {"role": "user", "content": "Are you there?"}], "id": 4}

SOURCES = {
    "alpaca": lambda d: _write(d / "alpaca.json", json.dumps(ALPACA_TURNS, indent=2)),
    "sharegpt": lambda d: _write(d / "chats.json", json.dumps(SHAREGPT, ensure_ascii=False, indent=2)),
    "messages": lambda d: write_jsonl(d / "messages.jsonl", [*MESSAGES, TRAILING]),
}
SUFFIX = {"alpaca-json": ".json", "jsonl": ".jsonl", "sharegpt": ".json", "messages": ".jsonl",
          "parquet": ".parquet", "hf-dataset": "", "original": ""}


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _ingest_and_select(cli, db_url: str, tmp_path: Path) -> dict[str, Path]:  # noqa: ANN001
    paths = {name: make(tmp_path) for name, make in SOURCES.items()}
    for name, path in paths.items():
        ok(cli("ingest", path, "--dataset", name))
    score_everything(db_url)
    for name in paths:
        ok(cli("select", name, "--dataset", name, "--prompt-set", "s", "--top", "1"))
    return paths


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_every_export_format_is_ingested_back_as_the_same_samples(cli, db_url: str, tmp_path: Path, fmt: str) -> None:
    paths = _ingest_and_select(cli, db_url, tmp_path)
    for name, source in paths.items():
        out = tmp_path / f"{name}-{fmt}{SUFFIX[fmt] or source.suffix}"
        ok(cli("export", "--selection", name, "--out", out, "--format", fmt, "--no-card"))
        n = 6 if name == "alpaca" else (3 if name == "sharegpt" else 4)
        result = cli("ingest", out, "--dataset", name)
        assert result.stdout == f"{name}: read {n}, new 0, duplicates {n}, invalid 0\n", (name, result.output)
        # A converted conversation ends with the rated turn; the original keeps what followed it.
        trailing = fmt == "original" and name == "messages"
        assert result.stderr.startswith("Warning: 1 of 4 records end with turns") if trailing else result.stderr == ""


def test_alpaca_records_keep_their_exact_shape_when_they_need_no_columns(cli, db_url: str, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "plain.jsonl", [{"instruction": "Hi", "input": "", "output": "Hello"},
                                                   {"instruction": "Add", "input": "2 and 3", "output": "5"}])
    ok(cli("ingest", source, "--dataset", "plain"))
    score_everything(db_url)
    ok(cli("select", "plain", "--dataset", "plain", "--prompt-set", "s", "--top", "1"))
    ok(cli("export", "--selection", "plain", "--out", tmp_path / "out.jsonl", "--format", "jsonl", "--order", "dataset"))
    assert (tmp_path / "out.jsonl").read_text() == (
        '{"instruction": "Hi", "input": "", "output": "Hello"}\n'
        '{"instruction": "Add", "input": "2 and 3", "output": "5"}\n')
    # A conversation format merges instruction and input as LLaMA-Factory does; the hash brings it back.
    ok(cli("export", "--selection", "plain", "--out", tmp_path / "out.msg.jsonl", "--format", "messages",
           "--order", "dataset"))
    rows = [json.loads(line) for line in (tmp_path / "out.msg.jsonl").read_text().splitlines()]
    assert rows[1]["messages"] == [{"role": "user", "content": "Add\n2 and 3"}, {"role": "assistant", "content": "5"}]
    assert set(rows[0]) == {"messages", "content_hash"}
    assert rows[1]["content_hash"] == content_hash("Add", "2 and 3", "5")


def test_alpaca_system_and_history_load_in_llamafactory_as_the_conversation(cli, db_url: str, tmp_path: Path) -> None:
    _ingest_and_select(cli, db_url, tmp_path)
    lf = tmp_path / "lf"
    for fmt in ("sharegpt", "alpaca-json", "jsonl", "parquet"):
        ok(cli("export", "--selection", "sharegpt", "--out", f"{lf}/", "--format", fmt, "--order", "dataset",
               "--llamafactory", f"chats_{fmt}"))
    expected = llamafactory_examples(lf, "chats_sharegpt")
    for fmt in ("alpaca-json", "jsonl", "parquet"):
        assert llamafactory_examples(lf, f"chats_{fmt}") == expected, fmt
    # An Alpaca source with history: alpaca and sharegpt give LLaMA-Factory the same turns.
    for fmt in ("alpaca-json", "sharegpt"):
        ok(cli("export", "--selection", "alpaca", "--out", f"{lf}/", "--format", fmt, "--order", "dataset",
               "--llamafactory", f"alpaca_{fmt}"))
    alpaca, sharegpt = llamafactory_examples(lf, "alpaca_alpaca-json"), llamafactory_examples(lf, "alpaca_sharegpt")
    assert alpaca == sharegpt
    assert alpaca[5] == [("system", "You translate."), ("user", "Translate 'Hallo'."), ("assistant", "Hello."),
                         ("user", "Again?"), ("assistant", "Hello again."), ("user", "And in French?\nBonjour"),
                         ("assistant", "Hello.")]


def test_a_conversation_ending_with_a_user_turn_is_rated_and_exported_through_its_last_answer(
        cli, db_url: str, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "m.jsonl", [MESSAGES[0], TRAILING])
    result = cli("ingest", source, "--dataset", "m")
    assert result.stdout == "m: read 2, new 2, duplicates 0, invalid 0\n"
    assert result.stderr == (
        "Warning: 1 of 2 records end with turns after the last assistant turn (first: record 2); those turns are "
        "not rated and converted exports leave them out (`export --format original` keeps them)\n")
    score_everything(db_url)
    ok(cli("select", "m", "--dataset", "m", "--prompt-set", "s", "--top", "1"))
    ok(cli("export", "--selection", "m", "--out", tmp_path / "m.out.jsonl", "--format", "messages", "--order", "dataset"))
    rows = [json.loads(line) for line in (tmp_path / "m.out.jsonl").read_text().splitlines()]
    assert rows[1] == {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
                       "id": "4"}  # the source record's id: the row traces back
    lf = tmp_path / "lf"
    ok(cli("export", "--selection", "m", "--out", f"{lf}/", "--format", "sharegpt", "--order", "dataset",
           "--llamafactory", "m"))
    for turns in llamafactory_examples(lf, "m"):  # LLaMA-Factory keeps a record only if it ends with an answer
        roles = [role for role, _ in turns if role != "system"]
        assert roles[-1] == "assistant" and len(roles) % 2 == 0
    ok(cli("export", "--selection", "m", "--out", tmp_path / "orig.jsonl", "--order", "dataset"))
    assert (tmp_path / "orig.jsonl").read_bytes() == source.read_bytes()  # the original stays whole


def test_the_api_counts_trailing_turns_and_returns_an_hf_dataset_in_memory(db_url: str, tmp_path: Path) -> None:
    init(db_url)
    store = selectit.open(db_url)
    result = store.ingest(write_jsonl(tmp_path / "m.jsonl", [MESSAGES[0], TRAILING]), "m")
    assert (result.trailing, result.first_trailing) == (1, 2)
    assert result.warning.startswith("1 of 2 records end with turns after the last assistant turn")
    source = SOURCES["alpaca"](tmp_path)
    assert store.ingest(source, "a").trailing == 0
    score_everything(db_url)
    store.select("a", "a", ranking=Ranking(prompt_set="s"), top=1.0)
    ds = store.export(selection="a", format="hf-dataset", order="dataset")
    import datasets

    assert isinstance(ds, datasets.Dataset) and len(ds) == 6
    assert ds.column_names == ["instruction", "input", "output", "system", "history", "messages", "content_hash", "id"]
    assert "selection: \"a\"" in ds.info.description  # the dataset card
    store.export(tmp_path / "a.hf", selection="a", format="hf-dataset", order="dataset", card=False)
    assert datasets.load_from_disk(str(tmp_path / "a.hf")).to_list() == ds.to_list()
    assert store.ingest(ds, "a").new == 0  # the in-memory dataset is the same samples
    with pytest.raises(SelectitError, match="only format='hf-dataset' can be returned in memory"):
        store.export(selection="a", format="jsonl")
    store.close()


def test_llamafactory_alpaca_history_is_read_as_the_turns_before_the_instruction(cli, db_url: str,
                                                                                  tmp_path: Path) -> None:
    from test_export import stored

    path = write_jsonl(tmp_path / "h.jsonl", [
        {"instruction": "And 3+3?", "input": "", "output": "6", "history": [["2+2?", "4"]], "system": "Be exact."},
        {"instruction": "Hi", "input": "", "output": "Hello", "history": "a note, not LLaMA-Factory's history"},
        {"instruction": "Hi", "input": "", "output": "Bye", "history": [["only a question"]]},
    ])
    result = cli("ingest", path, "--dataset", "h", "--skip-invalid")
    assert result.stdout == "h: read 3, new 1, duplicates 0, invalid 2\n"
    assert ("record 2 (line 2): field 'history' is not a list of [user, assistant] text pairs (got a string)"
            in result.stderr)
    assert "record 3 (line 3): field 'history' is not a list of [user, assistant] text pairs" in result.stderr
    assert stored(db_url, "h") == [("System: Be exact.\nUser: 2+2?\nAssistant: 4\nUser: And 3+3?", "", "6")]
