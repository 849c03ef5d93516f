"""The cost before scoring: `plan --dry-run` and `score --estimate` write nothing, count the
tokens the scorer then sees, and give a time once a run's throughput is recorded."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from conftest import DEMO_DATA

from selectit.api import Store
from selectit.store.db import session_scope
from selectit.store.schema import Prompt, Sample, Score, Throughput


def _every_row(engine: sa.Engine) -> dict[str, list[tuple]]:
    """Every table's rows, sorted: a write anywhere changes this."""
    out = {}
    with engine.connect() as conn:
        for table in sa.inspect(conn).get_table_names():
            rows = conn.execute(sa.text(f'SELECT * FROM "{table}"')).all()
            out[table] = sorted((tuple(map(repr, r)) for r in rows))
    return out


def test_estimates_write_nothing_and_count_the_tokens_the_scorer_sees(cli, db_url, tiny_model_dir) -> None:
    assert cli("ingest", DEMO_DATA, "--dataset", "d", "--limit", "8").exit_code == 0
    assert cli("model", "add", "tiny", "--source", str(tiny_model_dir), "--dtype", "float32").exit_code == 0
    store = Store(db_url)
    before = _every_row(store.engine)
    dry = cli("plan", "--dry-run")
    estimate = cli("score", "--dataset", "d", "--estimate")
    assert _every_row(store.engine) == before
    for result in (dry, estimate):
        assert result.exit_code == 0, result.output
        assert "tiny: 40 cells missing over 8 samples" in result.stdout and "(tokenizer)" in result.stdout
        assert "8 forwards; no time: no torch run of tiny is recorded yet" in result.stdout
        assert "Nothing was scored or written" in result.stdout
    [before_scoring] = store.estimate(dataset="d")
    [by_chars] = store.estimate(dataset="d", tokenizer=False)
    with session_scope(store.engine) as s:  # the planner's rule by hand: (sample chars + template chars) // 4
        chars = [n for (n,) in s.execute(sa.select(Sample.n_chars))]
        templates = [len(t) for (t,) in s.execute(sa.select(Prompt.template).where(Prompt.set_name == "default"))]
    assert by_chars.tokens_from.startswith("characters") and by_chars.tokens == sum(
        (n + t) // 4 for n in chars for t in templates)

    assert cli("score", "--dataset", "d", "--quiet").exit_code == 0
    with session_scope(store.engine) as s:  # what the scorer tokenized, cell by cell
        seen, truncated = s.execute(sa.select(sa.func.sum(Score.n_tokens),
                                              sa.func.sum(sa.cast(Score.truncated, sa.Integer)))).one()
        runs = s.execute(sa.select(Throughput.engine, Throughput.cells, Throughput.tokens, Throughput.seconds)).all()
    assert truncated == 0 and before_scoring.tokens == seen  # the 1% the estimate may be off: none here
    from selectit.status import status_rows

    # the live rate of `status` counts the scored cells' tokens as the planner does
    assert sum(r.recent_tokens for r in status_rows(store.engine, dataset="d")) == by_chars.tokens
    assert {r.engine for r in runs} == {"torch"} and sum(r.cells for r in runs) == 40

    assert cli("ingest", DEMO_DATA, "--dataset", "d12", "--limit", "12").exit_code == 0
    [after] = store.estimate(dataset="d12")
    rate = sum(r.cells for r in runs) / sum(r.seconds for r in runs)
    token_rate = sum(r.tokens for r in runs) / sum(r.seconds for r in runs)
    assert after.cells == 20 and after.samples == 4
    with session_scope(store.engine) as s:  # the planner's tokens of the 4 new samples, by hand
        new = [n for (n,) in s.execute(sa.select(Sample.n_chars).order_by(Sample.id))][8:]
    planned = sum((n + t) // 4 for n in new for t in templates)
    # per token, not per cell: the missing cells' tokens at the recorded tokens/s
    assert after.cells_per_second == pytest.approx(rate) and after.planned_tokens == planned
    assert after.tokens_per_second == pytest.approx(token_rate) and after.seconds == pytest.approx(planned / token_rate)
    line = cli("score", "--dataset", "d12", "--estimate").stdout
    assert "tiny: 20 cells missing over 4 samples" in line and f"at {token_rate:,.0f} tokens/s" in line
    assert "no time" not in line
    assert sum(r.missing_tokens for r in status_rows(store.engine, dataset="d12")) == planned
    from selectit.jobs.estimate import duration

    assert duration(planned / token_rate) in cli("status").stdout  # the time left per model, at the same rate


def test_estimate_errors_say_what_to_do(cli) -> None:
    result = cli("plan", "--dry-run", "--dataset", "nope")
    assert result.exit_code == 1 and "Error: no dataset named 'nope'" in result.output


def test_an_estimate_never_tokenizes_a_huge_record_whole(cli, db_url, tmp_path, tiny_model_dir, monkeypatch) -> None:
    """A 2 MiB base64 image once took 44 s and 2.3 GB: the estimate tokenizes a bounded head of
    each prompt, and counts a prompt the scorer cuts to the context as the context."""
    import base64
    import json
    import random

    from selectit.scoring import loading
    from selectit.store.schema import LLM

    image = base64.b64encode(random.Random(7).randbytes(3 * 2**19)).decode()  # 2 MiB of base64
    data = tmp_path / "big.json"
    data.write_text(json.dumps([{"instruction": "Describe this image.", "input": image, "output": "A cat."}]))
    assert cli("init").exit_code == 0
    assert cli("ingest", data, "--dataset", "big").exit_code == 0
    assert cli("model", "add", "tiny", "--source", str(tiny_model_dir), "--dtype", "float32").exit_code == 0
    longest = [0]
    real = loading.load_tokenizer

    def recording(src):  # the model's own tokenizer, noting the longest text it is given
        tokenizer = real(src)

        def call(texts, *args, **kwargs):
            longest[0] = max([longest[0], *(len(t) for t in ([texts] if isinstance(texts, str) else texts))])
            return tokenizer(texts, *args, **kwargs)
        return call

    monkeypatch.setattr(loading, "load_tokenizer", recording)
    store = Store(db_url)
    [e] = store.estimate(dataset="big")
    with session_scope(store.engine) as s:
        context = s.scalar(sa.select(LLM.max_tokens))
    assert e.tokens_from == "tokenizer" and 0 < longest[0] < len(image) // 10, longest
    assert e.tokens == 5 * context  # each prompt overflows the context: the scorer cuts it to that
    [by_chars] = store.estimate(dataset="big", tokenizer=False)
    assert by_chars.tokens == 5 * context


def test_a_served_model_is_estimated_at_the_openai_engines_rate(cli, db_url, tmp_path, tiny_model_dir,
                                                                monkeypatch) -> None:
    import json

    from test_openai_engine import KEY, FakeServer
    from test_torch_engine import records

    monkeypatch.delenv("SELECTIT_ENGINE", raising=False)  # the default engine, torch, for local models
    monkeypatch.setenv("TINY_KEY", KEY)
    server = FakeServer(tiny_model_dir)
    try:
        for name, recs in (("d", records(2)), ("d2", records(2, start=2))):
            (tmp_path / f"{name}.json").write_text(json.dumps(recs), encoding="utf-8")
        assert cli("init").exit_code == 0
        assert cli("ingest", tmp_path / "d.json", "--dataset", "d").exit_code == 0
        assert cli("model", "add", "srv", "--endpoint", server.url, "--served-model", "tiny", "--tokenizer",
                   tiny_model_dir, "--api-key-env", "TINY_KEY").exit_code == 0
        assert cli("score", "-q").exit_code == 0  # recorded as the openai engine's run
        store = Store(db_url)
        with session_scope(store.engine) as s:
            runs = s.execute(sa.select(Throughput.engine, Throughput.cells, Throughput.tokens,
                                       Throughput.seconds)).all()
        assert {r.engine for r in runs} == {"openai"}
        rate = sum(r.cells for r in runs) / sum(r.seconds for r in runs)
        token_rate = sum(r.tokens for r in runs) / sum(r.seconds for r in runs)
        assert cli("ingest", tmp_path / "d2.json", "--dataset", "d2").exit_code == 0
        line = cli("score", "--dataset", "d2", "--estimate").stdout
        assert "srv: 10 cells missing over 2 samples" in line and f"at {token_rate:,.0f} tokens/s" in line, line
        assert "openai, this store's last" in line
        [e] = store.estimate(dataset="d2")
        assert (e.engine, e.tokens_per_second, e.cells_per_second) == ("openai", pytest.approx(token_rate),
                                                                       pytest.approx(rate))
        assert set(store.time_left({e.model_id: 10}).values()) != {"–"}  # `selectit status`, the same rate
    finally:
        server.close()


def test_the_estimate_counts_the_signature_and_embedding_cells_still_missing(cli, db_url) -> None:
    """Cells of every kind: the near-duplicate signatures `score` computes first, and the
    embeddings of a model that `selectit embed` was asked for."""
    from test_turns import add_rater

    from selectit.store.schema import Embedder, LLM, SampleEmbedding, SampleSignature

    assert cli("ingest", DEMO_DATA, "--dataset", "d", "--limit", "10").exit_code == 0
    add_rater(db_url)
    store = Store(db_url)
    [e] = store.estimate(dataset="d", tokenizer=False)
    assert (e.signatures_missing, e.embeddings_missing) == (0, None)  # ingest signed them; no embedder
    with session_scope(store.engine) as s:
        ids = sorted(s.scalars(sa.select(Sample.id)))
        s.execute(sa.delete(SampleSignature).where(SampleSignature.sample_id.in_(ids[:3])))
        model_id = s.scalar(sa.select(LLM.id))
        s.add(Embedder(config_hash="e" * 64, config={"model_id": model_id}))
        s.flush()
        emb = s.scalar(sa.select(Embedder.id))
        s.add_all(SampleEmbedding(sample_id=i, embedder_id=emb, dim=1, vector=b"\0\0\0\0") for i in ids[:4])
    [e] = store.estimate(dataset="d", tokenizer=False)
    assert (e.signatures_missing, e.embeddings_missing) == (3, 6)
    out = cli("score", "--dataset", "d", "--estimate", "--prompt-set", "s").stdout
    assert "and 6 embedding cells (`selectit embed --model A`)" in out
    assert "near-duplicate signatures: 3 samples without one" in out
