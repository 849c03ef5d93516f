"""Data in and out as fine-tuning people work: originals back, export formats, cards, column maps, HF datasets.

The round trips run through the CLI on SQLite and on PostgreSQL: ingest → score (cells inserted
directly: no model needed) → select all → export the original records → the bytes that went in.
Exports are loaded with Hugging Face `datasets`, as a trainer would load them.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
import yaml
from click.testing import CliRunner

from selectit.cli import main
from selectit.contract import EXPORT_FORMATS
from selectit.formulas import token_score
from selectit.store import db
from selectit.store.db import session_scope
from selectit.store.schema import LLM, Prompt, Sample, Score

# ------------------------------------------------------------------------------------ fixtures
# Records with what a converter would lose: extra fields, nested values, floats written "1.10",
# \u escapes, decomposed accents (NFD), \r\n inside text, a system prompt, several turns.
ALPACA = [
    {"instruction": "Give three tips for staying healthy.", "input": "", "output": "1. Eat well.\r\n2. Sleep.",
     "id": "a-1", "category": "advice", "meta": {"score": 1.10, "tags": ["health", "tips"]}},
    {"instruction": "Translate to French.", "input": "Cafe\u0301 au lait", "output": "Un cafe\u0301 au lait.",
     "id": 7, "category": "translation", "meta": None},
    {"instruction": "Add 2 and 3.", "input": "", "output": "5", "id": "a-3", "category": "math",
     "meta": {"score": 3e-05, "tags": []}},
    {"instruction": "Name a colour 🎨.", "input": "", "output": "Blue.", "id": "a-4", "category": "open",
     "meta": {"score": -0.0, "tags": ["x"]}},
]
SHAREGPT = [
    {"id": "c1", "system": "You are terse.", "conversations": [
        {"from": "human", "value": "Hi!"}, {"from": "gpt", "value": "Hello."},
        {"from": "human", "value": "What is 2+2?"}, {"from": "gpt", "value": "4."}], "source": "chat"},
    {"id": "c2", "conversations": [{"from": "human", "value": "Write a haiku."},
                                   {"from": "gpt", "value": "Old pond\nfrog jumps in\nsplash"}]},
    {"id": "c3", "conversations": [{"from": "system", "value": "Answer in German."},
                                   {"from": "human", "value": "Thanks"}, {"from": "gpt", "value": "Bitte."}],
     "lang": "de"},
]
MESSAGES = [
    {"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hello?"},
                  {"role": "assistant", "content": "Hi there."}], "id": 1},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "Describe "}, {"type": "text", "text": "Rome."}]},
                  {"role": "assistant", "content": "An old city."}], "id": 2},
    {"messages": [{"role": "user", "content": "Weather?"},
                  {"role": "assistant", "content": "Let me check.", "tool_calls": [{"name": "weather"}]},
                  {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "It is sunny."}], "id": 3},
]


def write_alpaca_json(path: Path) -> Path:
    # indent=4 and ASCII escapes, as the Stanford Alpaca release is written.
    path.write_text(json.dumps(ALPACA, indent=4) + "\n", encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list, *, ascii: bool = False, newline: str = "\n") -> Path:
    path.write_bytes("".join(json.dumps(r, ensure_ascii=ascii) + newline for r in records).encode())
    return path


def write_sharegpt(path: Path) -> Path:
    path.write_text(json.dumps(SHAREGPT, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def parquet_table() -> pa.Table:
    return pa.table({
        "instruction": pa.array([r["instruction"] for r in ALPACA], pa.string()),
        "input": pa.array([r["input"] for r in ALPACA], pa.string()),
        "output": pa.array([r["output"] for r in ALPACA], pa.string()),
        "n": pa.array([1, 2, None, 4], pa.int32()),
        "tags": pa.array([["a"], [], ["b", "c"], None], pa.list_(pa.string())),
    })


INPUTS = {
    "alpaca-json": lambda d: write_alpaca_json(d / "alpaca.json"),
    "jsonl": lambda d: write_jsonl(d / "alpaca.jsonl", ALPACA, ascii=True, newline="\r\n"),
    "sharegpt": lambda d: write_sharegpt(d / "chats.json"),
    "messages": lambda d: write_jsonl(d / "messages.jsonl", MESSAGES),
    "parquet": lambda d: (pq.write_table(parquet_table(), d / "alpaca.parquet"), d / "alpaca.parquet")[1],
}


def score_everything(db_url: str, *, model: str = "A", fingerprint: str = "f" * 64) -> None:
    """Rate every stored sample (each of its turns alike) with model `model` on 3 prompts of the set
    's' (cells inserted directly), with probabilities that differ per sample, so the ranking is total."""
    engine = db.open_store(db_url)
    with session_scope(engine) as s:
        llm = LLM(name=model, source="test", fingerprint=fingerprint, dtype="float32", n_params=100,
                  label_ids={}, max_tokens=512)
        s.add(llm)
        prompts = list(s.scalars(sa.select(Prompt).where(Prompt.set_name == "s")))
        if not prompts:
            prompts = [Prompt(set_name="s", position=i, layout="shared-context", template=f"Rate {i}: ",
                              text_hash=f"{i:064x}", scale=3) for i in range(3)]
            s.add_all(prompts)
        s.flush()
        for sid, n_turns in s.execute(sa.select(Sample.id, Sample.n_turns)):
            for p in prompts:
                probs = cell(sid, p.position)
                s.add_all(Score(sample_id=sid, model_id=llm.id, prompt_id=p.id, turn=t, p1=probs[0], p2=probs[1],
                                p3=probs[2], mass=sum(probs), n_tokens=10, status="ok") for t in range(n_turns))
    engine.dispose()


def cell(sample_id: int, position: int) -> tuple[float, float, float]:
    # The label-1 probability jumps around with the sample id: the ranking is not the file's order.
    return (0.05 + 0.01 * ((7 * sample_id) % 10), 0.2 + 0.03 * position, 0.3)


@pytest.fixture
def cli_sqlite(sqlite_url: str):
    runner = CliRunner()

    def invoke(*args: str):  # noqa: ANN202
        return runner.invoke(main, ["--db", sqlite_url, *map(str, args)], catch_exceptions=False)

    invoke.url = sqlite_url  # type: ignore[attr-defined]
    return invoke


def ok(result) -> str:  # noqa: ANN001
    assert result.exit_code == 0, result.output
    return result.output


def select_all(cli, db_url: str, path: Path, dataset: str = "d", *extra: str) -> None:  # noqa: ANN001
    ok(cli("ingest", path, "--dataset", dataset, *extra))
    score_everything(db_url)
    ok(cli("select", "all", "--dataset", dataset, "--prompt-set", "s", "--top", "1"))


# ------------------------------------------------------------------------------------ round trips
def records_of(path: Path) -> list[bytes]:
    """The records of a JSON list (each element's exact bytes) or of a JSONL file (each line)."""
    data = path.read_bytes()
    if data.lstrip().startswith(b"["):
        decoder = json.JSONDecoder()
        text = data.decode()
        out, i = [], text.index("[") + 1
        while True:
            while text[i] in " \t\r\n,":
                i += 1
            if text[i] == "]":
                return out
            _, end = decoder.raw_decode(text, i)
            out.append(text[i:end].encode())
            i = end
    return [line for line in data.splitlines() if line.strip()]


@pytest.mark.parametrize("fmt", list(INPUTS))
def test_original_records_come_back_byte_for_byte(cli, db_url: str, tmp_path: Path, fmt: str) -> None:
    source = INPUTS[fmt](tmp_path)
    select_all(cli, db_url, source)
    out = tmp_path / ("out" + source.suffix)
    # --format original is the default for a selection; --order dataset keeps the file's order.
    assert "(original" in ok(cli("export", "--selection", "all", "--out", out, "--order", "dataset"))
    if fmt == "parquet":
        assert pq.read_table(out).equals(pq.read_table(source))
        assert pq.read_table(out).schema == pq.read_table(source).schema
    else:
        assert records_of(out) == records_of(source)
        assert out.read_bytes() == source.read_bytes()  # the container's style is kept too
    # In rank order (the default) the same records come back, reordered.
    ranked = tmp_path / ("ranked" + source.suffix)
    ok(cli("export", "--selection", "all", "--out", ranked, "--format", "original"))
    if fmt == "parquet":
        assert sorted(map(str, pq.read_table(ranked).to_pylist())) == sorted(map(str, pq.read_table(source).to_pylist()))
    else:
        assert sorted(records_of(ranked)) == sorted(records_of(source))
        assert records_of(ranked) != records_of(source)


def test_the_same_content_from_two_formats_keeps_each_membership_s_original(cli, db_url: str, tmp_path: Path) -> None:
    jsonl = write_jsonl(tmp_path / "a.jsonl", ALPACA[:2])
    parquet = tmp_path / "a.parquet"
    pq.write_table(parquet_table().slice(0, 2), parquet)
    ok(cli("ingest", jsonl, "--dataset", "lines"))
    ok(cli("ingest", parquet, "--dataset", "table"))
    score_everything(db_url)
    for name in ("lines", "table"):
        ok(cli("select", name, "--dataset", name, "--prompt-set", "s", "--top", "1"))
    ok(cli("export", "--selection", "lines", "--out", tmp_path / "lines.out", "--order", "dataset"))
    ok(cli("export", "--selection", "table", "--out", tmp_path / "table.out", "--order", "dataset"))
    assert (tmp_path / "lines.out").read_bytes() == jsonl.read_bytes()
    assert pq.read_table(tmp_path / "table.out").equals(pq.read_table(parquet))
    # Two distinct contents, stored (and scored) once each.
    engine = db.open_store(db_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM samples")).scalar_one() == 2
    engine.dispose()


def test_original_needs_kept_originals_and_one_kind_of_file(cli_sqlite, tmp_path: Path) -> None:
    cli = cli_sqlite
    ok(cli("ingest", write_jsonl(tmp_path / "a.jsonl", ALPACA[:2]), "--dataset", "d"))
    pq.write_table(parquet_table().slice(2, 2), tmp_path / "b.parquet")
    ok(cli("ingest", tmp_path / "b.parquet", "--dataset", "d"))
    score_everything(cli.url)
    ok(cli("select", "all", "--dataset", "d", "--prompt-set", "s", "--top", "1"))
    result = cli("export", "--selection", "all", "--out", tmp_path / "x.jsonl", "--format", "original")
    assert result.exit_code == 1
    assert result.output == (
        "Error: the selected records come from files of different kinds (jsonl, parquet), so there is no one "
        "original format; choose one with --format (jsonl, messages, sharegpt, …)\n")
    assert not (tmp_path / "x.jsonl").exists()
    ok(cli("export", "--selection", "all", "--out", tmp_path / "x.jsonl", "--format", "jsonl"))
    assert len((tmp_path / "x.jsonl").read_text().splitlines()) == 4


# ------------------------------------------------------------------------------------ export formats
def load_json(path: Path):  # noqa: ANN201
    from selectit.io.readers import datasets_offline

    return datasets_offline().load_dataset("json", data_files=str(path), split="train")


def front_matter(card: Path) -> dict:
    text = card.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


@pytest.fixture
def chats(cli_sqlite, tmp_path: Path):  # noqa: ANN201
    """A ShareGPT dataset 'd', scored and frozen as the selection 'all'; returns (cli, source file)."""
    source = write_sharegpt(tmp_path / "chats.json")
    select_all(cli_sqlite, cli_sqlite.url, source)
    return cli_sqlite, source


def test_sharegpt_export_keeps_turns_and_system_and_loads_with_datasets(chats, tmp_path: Path) -> None:
    cli, _ = chats
    out = tmp_path / "sharegpt.json"
    ok(cli("export", "--selection", "all", "--out", out, "--format", "sharegpt", "--order", "dataset"))
    rows = load_json(out).to_list()
    assert rows[0]["conversations"] == [{"from": "human", "value": "Hi!"}, {"from": "gpt", "value": "Hello."},
                                        {"from": "human", "value": "What is 2+2?"}, {"from": "gpt", "value": "4."}]
    assert rows[0]["system"] == "You are terse."
    assert rows[2]["system"] == "Answer in German."  # a system turn becomes the system field


def test_messages_export_is_what_trl_reads(chats, tmp_path: Path) -> None:
    cli, _ = chats
    out = tmp_path / "messages.jsonl"
    ok(cli("export", "--selection", "all", "--out", out, "--format", "messages", "--order", "dataset"))
    rows = load_json(out).to_list()
    assert rows[0]["messages"] == [
        {"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."}]
    assert [m["role"] for m in rows[1]["messages"]] == ["user", "assistant"]


@pytest.mark.parametrize("fmt, name", [("alpaca-json", "a.json"), ("jsonl", "a.jsonl"), ("parquet", "a.parquet")])
def test_alpaca_shaped_exports_load_with_datasets(chats, tmp_path: Path, fmt: str, name: str) -> None:
    cli, _ = chats
    out = tmp_path / name
    ok(cli("export", "--selection", "all", "--out", out, "--format", fmt, "--order", "dataset"))
    from selectit.io.readers import datasets_offline

    hf = datasets_offline()
    ds = (hf.load_dataset("parquet", data_files=str(out), split="train") if fmt == "parquet" else load_json(out))
    # LLaMA-Factory's alpaca columns: the system prompt and the exchanges before the last one are
    # columns of their own, on every record once one record needs them (one schema per file).
    assert ds.column_names[:5] == ["instruction", "input", "output", "system", "history"]
    assert ds[1] == {"instruction": "Write a haiku.", "input": "", "output": "Old pond\nfrog jumps in\nsplash",
                     "system": "", "history": [], "id": "c2"}  # the source record's id: the row traces back
    assert ds[0] == {"instruction": "What is 2+2?", "input": "", "output": "4.", "system": "You are terse.",
                     "history": [["Hi!", "Hello."]], "id": "c1"}
    assert ds[2] == {"instruction": "Thanks", "input": "", "output": "Bitte.", "system": "Answer in German.",
                     "history": [], "id": "c3"}


def test_hf_dataset_directory_loads_from_disk_with_its_card(chats, tmp_path: Path) -> None:
    cli, _ = chats
    out = tmp_path / "hf"
    ok(cli("export", "--selection", "all", "--out", out, "--format", "hf-dataset", "--with-scores"))
    from selectit.io.readers import datasets_offline

    ds = datasets_offline().load_from_disk(str(out))
    assert len(ds) == 3 and {"instruction", "input", "output", "messages", "s_model", "rank"} <= set(ds.column_names)
    assert ds["rank"] == [1, 2, 3]
    meta = front_matter(out / "README.md")
    assert meta["selectit"]["counts"]["selected"] == 3


def test_card_records_the_provenance(chats, tmp_path: Path) -> None:
    cli, source = chats
    out = tmp_path / "export"
    ok(cli("export", "--selection", "all", "--out", f"{out}/", "--format", "jsonl"))  # a new directory
    assert (out / "all.jsonl").exists()  # named after the selection
    meta = front_matter(out / "all.README.md")
    assert meta["configs"] == [{"config_name": "default", "data_files": "all.jsonl"}]
    p = meta["selectit"]
    from selectit import __version__

    assert p["selectit_version"] == __version__ and p["created_at"].endswith("Z")
    assert p["selection"] == "all" and p["dataset"] == "d"
    assert p["source_files"] == [{  # the file's name and hash, not the user's path (--card-paths adds it)
        "file": source.name, "sha256": hashlib.sha256(source.read_bytes()).hexdigest(), "format": "sharegpt",
        "records": 3, "ingested_at": p["source_files"][0]["ingested_at"]}]
    assert str(source.parent) not in (out / "all.README.md").read_text(encoding="utf-8")
    [model] = p["models"]
    assert model["name"] == "A" and model["fingerprint"] == "f" * 64 and model["dtype"] == "float32"
    assert model["theta"] == 100 and model["share"] == 1 and model["n_params"] == 100
    assert p["prompt_set"]["name"] == "s"
    assert [(q["position"], q["layout"], q["scale"]) for q in p["prompt_set"]["prompts"]] == [
        (0, "shared-context", 3), (1, "shared-context", 3), (2, "shared-context", 3)]
    assert all(len(q["text_hash"]) == 64 and isinstance(q["version"], int) for q in p["prompt_set"]["prompts"])
    assert p["alpha"] == 0.2 and p["formula"] == "paper" and p["engine"].startswith("duckdb ")
    assert p["criterion"] == {"top": 1.0, "top_n": None, "min_score": None}
    assert p["counts"] == {"dataset_samples": 3, "rankable": 3, "selected": 3}
    assert p["export_format"] == "jsonl"


def test_with_scores_adds_s_model_s_sent_and_s_token(chats, tmp_path: Path) -> None:
    cli, _ = chats
    out = tmp_path / "scored.jsonl"
    ok(cli("export", "--selection", "all", "--out", out, "--format", "messages", "--with-scores"))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    engine = db.open_store(cli.url)
    with engine.connect() as conn:
        ids = [r[0] for r in conn.execute(sa.text("SELECT sample_id FROM selection_samples ORDER BY rank"))]
    engine.dispose()
    for rank, (row, sid) in enumerate(zip(rows, ids), 1):
        tokens = [token_score(cell(sid, j))[1] for j in range(3)]
        mean = sum(tokens) / 3
        std = math.sqrt(sum((t - mean) ** 2 for t in tokens) / 3)
        assert row["rank"] == rank
        assert row["s_token"] == {"A": {f"p{j}": pytest.approx(tokens[j], rel=1e-12) for j in range(3)}}
        assert row["s_sent"] == {"A": pytest.approx(mean / (1 + 0.2 * std), rel=1e-12)}
        assert row["s_model"] == pytest.approx(row["s_sent"]["A"], rel=1e-12)


def test_frozen_scores_ignore_models_added_later(chats, tmp_path: Path) -> None:
    cli, _ = chats
    first = tmp_path / "first.jsonl"
    ok(cli("export", "--selection", "all", "--out", first, "--with-scores"))
    score_everything(cli.url, model="B", fingerprint="b" * 64)  # a new model rates everything
    again = tmp_path / "again.jsonl"
    ok(cli("export", "--selection", "all", "--out", again, "--with-scores"))
    assert again.read_bytes() == first.read_bytes()


# ------------------------------------------------------------------------------------ LLaMA-Factory
# The documented schema of a dataset_info.json entry (LLaMA-Factory data/README.md).
LF_KEYS = {"hf_hub_url", "ms_hub_url", "script_url", "cloud_file_name", "file_name", "file_sha1", "formatting",
           "ranking", "subset", "split", "folder", "num_samples", "columns", "tags"}
LF_COLUMNS = {"prompt", "query", "response", "history", "messages", "system", "tools", "images", "videos", "audios",
              "chosen", "rejected", "kto_tag"}
LF_TAGS = {"role_tag", "content_tag", "user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag"}
LF_DEFAULT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                   "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}


def llamafactory_examples(info_dir: Path, name: str) -> list[list[tuple[str, str]]]:
    """Load an export the way LLaMA-Factory's converters read it, per its dataset_info.json entry:
    a list of (role, text) per example, after checking the entry against the documented schema."""
    entry = json.loads((info_dir / "dataset_info.json").read_text())[name]
    assert set(entry) <= LF_KEYS and "file_name" in entry
    assert entry.get("formatting", "alpaca") in ("alpaca", "sharegpt")
    assert set(entry.get("columns", {})) <= LF_COLUMNS and set(entry.get("tags", {})) <= LF_TAGS
    path = info_dir / entry["file_name"]
    assert hashlib.sha1(path.read_bytes()).hexdigest() == entry["file_sha1"]
    from selectit.io.readers import datasets_offline

    kind = {".parquet": "parquet", ".csv": "csv"}.get(path.suffix, "json")
    rows = datasets_offline().load_dataset(kind, data_files=str(path), split="train").to_list()
    cols = entry.get("columns", {})
    examples = []
    for row in rows:
        if entry.get("formatting", "alpaca") == "alpaca":
            prompt = row[cols.get("prompt", "instruction")]
            query = row.get(cols.get("query", "input")) or ""
            turns = [turn for old_prompt, old_response in (row.get(cols["history"]) or [] if cols.get("history") else [])
                     for turn in (("user", old_prompt), ("assistant", old_response))]
            turns += [("user", prompt + ("\n" + query if query else "")), ("assistant", row[cols.get("response", "output")])]
            if cols.get("system") and row.get(cols["system"]):
                turns.insert(0, ("system", row[cols["system"]]))
        else:
            tags = LF_DEFAULT_TAGS | entry.get("tags", {})
            role_of = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant",
                       tags["observation_tag"]: "tool", tags["function_tag"]: "assistant", tags["system_tag"]: "system"}
            turns = [(role_of[m[tags["role_tag"]]], m[tags["content_tag"]]) for m in row[cols.get("messages", "conversations")]]
            if cols.get("system") and row.get(cols["system"]):
                turns.insert(0, ("system", row[cols["system"]]))
        examples.append(turns)
    return examples


@pytest.mark.parametrize("fmt", ["sharegpt", "messages", "alpaca-json", "jsonl", "parquet", "original"])
def test_llamafactory_entry_follows_the_documented_schema(chats, tmp_path: Path, fmt: str) -> None:
    cli, _ = chats
    out = tmp_path / "lf"
    out.mkdir()
    (out / "dataset_info.json").write_text(json.dumps({"alpaca_en_demo": {"file_name": "alpaca_en_demo.json"}}))
    ok(cli("export", "--selection", "all", "--out", out, "--format", fmt, "--order", "dataset", "--llamafactory"))
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["alpaca_en_demo"] == {"file_name": "alpaca_en_demo.json"}  # other entries are kept
    examples = llamafactory_examples(out, "all")
    assert len(examples) == 3
    # Every format, alpaca's included (system and history columns), gives LLaMA-Factory the whole conversation.
    assert examples[0] == [("system", "You are terse."), ("user", "Hi!"), ("assistant", "Hello."),
                           ("user", "What is 2+2?"), ("assistant", "4.")]
    assert examples[1] == [("user", "Write a haiku."), ("assistant", "Old pond\nfrog jumps in\nsplash")]
    assert examples[2] == [("system", "Answer in German."), ("user", "Thanks"), ("assistant", "Bitte.")]
    entry = json.loads((out / "dataset_info.json").read_text())["all"]
    if fmt in ("alpaca-json", "jsonl", "parquet"):
        assert entry["columns"] == {"prompt": "instruction", "query": "input", "response": "output",
                                    "system": "system", "history": "history"}


def test_llamafactory_entry_for_a_mapped_original_names_the_file_s_columns(cli_sqlite, tmp_path: Path) -> None:
    cli = cli_sqlite
    dolly = write_jsonl(tmp_path / "dolly.jsonl", DOLLY)
    select_all(cli, cli.url, dolly, "d", "--map", "input=context,output=response")
    ok(cli("export", "--selection", "all", "--out", tmp_path, "--order", "dataset", "--llamafactory", "dolly_top"))
    entry = json.loads((tmp_path / "dataset_info.json").read_text())["dolly_top"]
    assert entry["columns"] == {"prompt": "instruction", "query": "context", "response": "response"}
    assert llamafactory_examples(tmp_path, "dolly_top")[0] == [
        ("user", "Who wrote Hamlet?\nA play."), ("assistant", "Shakespeare.")]


# ------------------------------------------------------------------------------------ more ways in
DOLLY = [
    {"instruction": "Who wrote Hamlet?", "context": "A play.", "response": "Shakespeare.", "category": "open_qa"},
    {"instruction": "Name a prime.", "context": "", "response": "7", "category": "brainstorming"},
]
OPENORCA = [
    {"id": "niv.1", "system_prompt": "You are an AI assistant.", "question": "Is the sky blue?", "response": "Yes."},
    {"id": "niv.2", "system_prompt": "", "question": "2+2?", "response": "4"},
]
TRL = [{"prompt": "The sky is", "completion": " blue."}, {"prompt": "Water boils at", "completion": " 100 °C."}]


def stored(db_url: str, dataset: str = "d") -> list[tuple[str, str, str]]:
    engine = db.open_store(db_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT s.instruction, s.input, s.output FROM dataset_samples m JOIN samples s ON s.id = m.sample_id "
            f"JOIN datasets d ON d.id = m.dataset_id WHERE d.name = '{dataset}' ORDER BY m.position")).all()
    engine.dispose()
    return [tuple(r) for r in rows]


@pytest.mark.parametrize("records, mapping, expected", [
    (DOLLY, "input=context,output=response",
     [("Who wrote Hamlet?", "A play.", "Shakespeare."), ("Name a prime.", "", "7")]),
    (OPENORCA, "instruction=question,output=response,system=system_prompt",
     [("System: You are an AI assistant.\nUser: Is the sky blue?", "", "Yes."), ("2+2?", "", "4")]),
    (TRL, "prompt=prompt,completion=completion",
     [("The sky is", "", " blue."), ("Water boils at", "", " 100 °C.")]),
    (TRL, "instruction=prompt,output=completion",
     [("The sky is", "", " blue."), ("Water boils at", "", " 100 °C.")]),
], ids=["dolly", "openorca", "trl-prompt-completion", "trl-as-instruction-output"])
def test_column_map_ingests_other_schemas(cli, db_url: str, tmp_path: Path, records, mapping, expected) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", records)
    assert ok(cli("ingest", path, "--dataset", "d", "--map", mapping)).endswith(
        "d: read 2, new 2, duplicates 0, invalid 0\n")
    assert stored(db_url) == expected
    # The original comes back as it was, whatever the map.
    score_everything(db_url)
    ok(cli("select", "all", "--dataset", "d", "--prompt-set", "s", "--top", "1"))
    ok(cli("export", "--selection", "all", "--out", tmp_path / "back.jsonl", "--order", "dataset"))
    assert (tmp_path / "back.jsonl").read_bytes() == path.read_bytes()


TRL_CONVERSATIONAL = [
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sky colour?"}],
     "completion": [{"role": "assistant", "content": "Blue."}]},
    {"prompt": [{"role": "user", "content": "2+2?"}], "completion": [{"role": "assistant", "content": "4"}]},
]


@pytest.mark.parametrize("records, expected", [
    (TRL, [("The sky is", "", " blue."), ("Water boils at", "", " 100 °C.")]),
    (TRL_CONVERSATIONAL, [("System: Be brief.\nUser: Sky colour?", "", "Blue."), ("2+2?", "", "4")]),
], ids=["standard", "conversational"])
def test_trl_prompt_completion_records_need_no_map(cli, db_url: str, tmp_path: Path, records, expected) -> None:
    """TRL's two prompt-completion forms are recognised from their fields, in JSONL and Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = write_jsonl(tmp_path / "trl.jsonl", records)
    assert ok(cli("ingest", path, "--dataset", "d")).endswith("d: read 2, new 2, duplicates 0, invalid 0\n")
    assert stored(db_url) == expected
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "trl.parquet")
    assert ok(cli("ingest", tmp_path / "trl.parquet", "--dataset", "p")).endswith(
        "p: read 2, new 2, duplicates 0, invalid 0; of the 2 new in this dataset, already stored for "
        "another dataset (and scored once): 2, new samples: 0\n")
    assert stored(db_url, "p") == expected
    score_everything(db_url)
    ok(cli("select", "all", "--dataset", "d", "--prompt-set", "s", "--top", "1"))
    ok(cli("export", "--selection", "all", "--out", tmp_path / "back.jsonl", "--order", "dataset"))
    assert (tmp_path / "back.jsonl").read_bytes() == path.read_bytes()


def test_column_map_errors_name_the_column_and_the_file_s_columns(cli_sqlite, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "dolly.jsonl", DOLLY)
    result = cli_sqlite("ingest", path, "--dataset", "d", "--map", "input=context,output=answer")
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {path}: --map output=answer names a column the file does not have; its columns are "
        f"category, context, instruction, response. Nothing was ingested; fix --map.\n")
    result = cli_sqlite("ingest", path, "--dataset", "d")
    assert result.exit_code == 1
    assert "the first record has fields ['category', 'context', 'instruction', 'response']" in result.output
    assert "map the columns, e.g. --map input=context,output=response" in result.output  # the likely columns
    result = cli_sqlite("ingest", path, "--dataset", "d", "--map", "answer=response")
    assert result.exit_code == 1
    assert result.output == ("Error: --map answer=response: unknown field 'answer'; map instruction, input, output, "
                             "system (or prompt, completion), e.g. --map instruction=question,output=response\n")
    assert stored(cli_sqlite.url) == []


def test_csv_and_tsv(cli_sqlite, tmp_path: Path) -> None:
    csv_path = tmp_path / "data.csv"
    csv_path.write_text('instruction,input,output,id\n"Say ""hi""",,"Hi,\nthere",1\nCount,1 2,3,2\n', encoding="utf-8")
    tsv_path = tmp_path / "data.tsv"
    tsv_path.write_text("question\tanswer\nWhy?\tBecause.\n", encoding="utf-8")
    ok(cli_sqlite("ingest", csv_path, "--dataset", "d"))
    ok(cli_sqlite("ingest", tsv_path, "--dataset", "t", "--map", "instruction=question,output=answer"))
    assert stored(cli_sqlite.url) == [('Say "hi"', "", "Hi,\nthere"), ("Count", "1 2", "3")]
    assert stored(cli_sqlite.url, "t") == [("Why?", "", "Because.")]
    score_everything(cli_sqlite.url)
    ok(cli_sqlite("select", "all", "--dataset", "d", "--prompt-set", "s", "--top", "1"))
    ok(cli_sqlite("export", "--selection", "all", "--out", tmp_path / "back.csv", "--order", "dataset"))
    assert (tmp_path / "back.csv").read_bytes() == csv_path.read_bytes()


def test_arrow_ipc_file_and_stream(cli_sqlite, tmp_path: Path) -> None:
    table = parquet_table()
    with pa.OSFile(str(tmp_path / "f.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    with pa.OSFile(str(tmp_path / "s.arrows"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    ok(cli_sqlite("ingest", tmp_path / "f.arrow", "--dataset", "d"))
    ok(cli_sqlite("ingest", tmp_path / "s.arrows", "--dataset", "s", "--format", "arrow"))
    assert len(stored(cli_sqlite.url)) == 4 and stored(cli_sqlite.url, "s") == stored(cli_sqlite.url)
    score_everything(cli_sqlite.url)
    ok(cli_sqlite("select", "all", "--dataset", "d", "--prompt-set", "s", "--top", "1"))
    ok(cli_sqlite("export", "--selection", "all", "--out", tmp_path / "back.arrow", "--order", "dataset"))
    assert pa.ipc.open_file(str(tmp_path / "back.arrow")).read_all().equals(table)


def test_save_to_disk_directory_and_dataset_dict_split(cli_sqlite, tmp_path: Path) -> None:
    from selectit.io.readers import datasets_offline

    hf = datasets_offline()
    rows = [{k: v for k, v in r.items() if k != "id"} for r in ALPACA[:3]]  # (ids of mixed types)
    hf.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    ok(cli_sqlite("ingest", tmp_path / "ds", "--dataset", "d"))
    assert [r[0] for r in stored(cli_sqlite.url)] == [r["instruction"] for r in ALPACA[:3]]
    hf.DatasetDict({"train": hf.Dataset.from_list(DOLLY), "test": hf.Dataset.from_list(DOLLY[:1])}).save_to_disk(
        str(tmp_path / "dd"))
    result = cli_sqlite("ingest", tmp_path / "dd", "--dataset", "dolly", "--map", "input=context,output=response")
    assert result.exit_code == 1
    assert result.output == (f"Error: {tmp_path / 'dd'} holds a DatasetDict with the splits test, train; choose one "
                             f"with --split (e.g. --split train). Nothing was ingested.\n")
    ok(cli_sqlite("ingest", tmp_path / "dd", "--dataset", "dolly", "--split", "test", "--map",
                  "input=context,output=response"))
    assert stored(cli_sqlite.url, "dolly") == [("Who wrote Hamlet?", "A play.", "Shakespeare.")]
    # Exported back as a save_to_disk directory with the same rows.
    score_everything(cli_sqlite.url)
    ok(cli_sqlite("select", "all", "--dataset", "d", "--prompt-set", "s", "--top", "1"))
    ok(cli_sqlite("export", "--selection", "all", "--out", tmp_path / "back", "--order", "dataset"))
    assert hf.load_from_disk(str(tmp_path / "back")).to_list() == hf.load_from_disk(str(tmp_path / "ds")).to_list()


def test_content_parts_with_text_or_value(cli_sqlite, tmp_path: Path) -> None:
    records = [{"messages": [{"role": "user", "content": [{"type": "text", "value": "Hello "},
                                                          {"type": "text", "text": "world"}]},
                             {"role": "assistant", "content": [{"type": "text", "value": "Hi."}]}]}]
    ok(cli_sqlite("ingest", write_jsonl(tmp_path / "m.jsonl", records), "--dataset", "d"))
    assert stored(cli_sqlite.url) == [("Hello world", "", "Hi.")]


# ------------------------------------------------------------------------------------ line separators
# What str.splitlines() splits on besides \n and \r: inside JSON text they are ordinary characters
# (json.dumps writes them raw with ensure_ascii=False), so a reader that splits on them cuts a record.
SEPARATORS = ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"]


def _separated_sources(tmp_path: Path) -> dict[str, tuple[Path, list[str]]]:
    """Shape → (a file with one record per separator, that separator in every text field; the texts)."""
    alpaca = [{"instruction": f"Add{c}them", "input": f"2{c}3", "output": f"5{c}done", "system": f"Be{c}exact",
               "history": [[f"Hi{c}there", f"Hello{c}you"]]} for c in SEPARATORS]
    sharegpt = [{"system": f"Sys{c}tem", "conversations": [
        {"from": "human", "value": f"Q{c}1"}, {"from": "gpt", "value": f"A{c}1"},
        {"from": "human", "value": f"Q{c}2"}, {"from": "gpt", "value": f"A{c}2"}]} for c in SEPARATORS]
    messages = [{"messages": [{"role": "system", "content": f"Be{c}kind"}, {"role": "user", "content": f"U{c}u"},
                              {"role": "assistant", "content": f"R{c}r"}]} for c in SEPARATORS]
    (tmp_path / "chats.json").write_text(json.dumps(sharegpt, ensure_ascii=False), encoding="utf-8")
    texts = {"alpaca": [t for r in alpaca for t in (r["instruction"], r["input"], r["output"], r["system"],
                                                     *r["history"][0])],
             "sharegpt": [t for r in sharegpt for t in (r["system"], *(x["value"] for x in r["conversations"]))],
             "messages": [m["content"] for r in messages for m in r["messages"]]}
    return {"alpaca": (write_jsonl(tmp_path / "alpaca.jsonl", alpaca), texts["alpaca"]),
            "sharegpt": (tmp_path / "chats.json", texts["sharegpt"]),
            "messages": (write_jsonl(tmp_path / "messages.jsonl", messages), texts["messages"])}


def _exported_strings(path: Path) -> list[list[str]]:
    """Every string of every exported record (a JSON list, JSON lines split at \\n only, Parquet, a
    save_to_disk directory), per record."""
    def strings(value: object) -> list[str]:
        if isinstance(value, str):
            return [value]
        items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
        return [s for v in items for s in strings(v)]

    if path.is_dir():
        from selectit.io.readers import datasets_offline

        rows = datasets_offline().load_from_disk(str(path)).to_list()
    elif path.suffix == ".parquet":
        rows = pq.read_table(path).to_pylist()
    else:
        text = path.read_text(encoding="utf-8")
        rows = json.loads(text) if text.startswith("[") else [json.loads(line) for line in text.split("\n") if line]
    return [strings(row) for row in rows]


@pytest.mark.parametrize("llamafactory", [False, True], ids=["plain", "llamafactory"])
@pytest.mark.parametrize("shape", ["alpaca", "sharegpt", "messages"])
def test_line_separators_inside_text_survive_ingest_and_every_export(cli_sqlite, tmp_path: Path, shape: str,
                                                                    llamafactory: bool) -> None:
    cli = cli_sqlite
    source, texts = _separated_sources(tmp_path)[shape]
    select_all(cli, cli.url, source)
    last = {"alpaca": "5{}done", "sharegpt": "A{}2", "messages": "R{}r"}[shape]  # the rated answer
    assert [output for _, _, output in stored(cli.url)] == [last.format(c) for c in SEPARATORS]
    for fmt in EXPORT_FORMATS:
        if llamafactory and fmt == "hf-dataset":
            continue  # LLaMA-Factory reads files, not save_to_disk directories
        out = tmp_path / f"out-{fmt}"
        extra = ["--llamafactory", "sep"] if llamafactory else []
        ok(cli("export", "--selection", "all", "--out", f"{out}/", "--format", fmt, "--order", "dataset", *extra))
        data = next(p for p in out.iterdir() if p.name.startswith("sep" if llamafactory else "all")
                    and not p.name.endswith(".md"))
        if fmt == "original":
            assert records_of(data) == records_of(source), fmt
        records = _exported_strings(data)
        assert len(records) == len(SEPARATORS), fmt
        for n, c in enumerate(SEPARATORS):  # each text, whole, in its own record (input may join the instruction)
            mine = [t for t in texts if c in t]
            assert all(any(t in s for s in records[n]) for t in mine), (fmt, repr(c), records[n])
        if llamafactory:
            examples = llamafactory_examples(out, "sep")
            assert [sum(len(text) for _, text in turns) > 0 for turns in examples] == [True] * len(SEPARATORS)
            for turns, c in zip(examples, SEPARATORS):
                assert all(any(t in text for _, text in turns) for t in texts if c in t), (fmt, repr(c), turns)
