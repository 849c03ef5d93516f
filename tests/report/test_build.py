"""`selectit report`: the page, its plots and the numbers behind them, on SQLite and PostgreSQL.

The fixture is a small scored store written with SQLAlchemy: a dataset of 12 samples (varied
response lengths, some calculation instructions), 2 models, a 3-prompt set, seeded p1..p5, one
missing cell and one failed cell. The expected numbers are recomputed here from the fixture and
the fusion's own ranking, independently of the report code.
"""

from __future__ import annotations

import csv
import hashlib
import json
import statistics
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

import selectit

from selectit.fusion import views as fusion
from selectit.report.build import build_report, is_calculation
from selectit.store.schema import LLM, Dataset, DatasetSample, Prompt, Sample, Score

# (instruction, input, output, is a calculation by the documented heuristic)
SAMPLES = [
    ("Calculate the area of a circle with radius 3.", "", "The area is π·3² ≈ 28.27 square units.", True),
    ("What is 12 * 7?", "", "84", True),
    ("How many legs does a spider have?", "", "A spider has eight legs." * 3, True),
    ("Give three tips for staying healthy.", "", "1. Eat well.\n2. Sleep enough.\n3. Move every day.\n" * 3, False),
    ("Write a haiku about autumn.", "", "Leaves drift on cold wind\nthe maple lets go of red\nsilence fills", False),
    ("Summarize the text.", "The meeting on 2020-01-01 covered budgets.", "It covered budgets.", False),
    ("What is 15% of 80?", "", "Fifteen percent of 80 is 12.", True),
    ("Translate to French.", "Good morning, café owner", "Bonjour, propriétaire du café ☕", False),
    ("Solve for x.", "2x + 3 = 11", "Subtract 3 and divide by 2: x = 4. " * 4, True),
    ("Describe the water cycle.", "", "Water evaporates, condenses into clouds and falls as rain. " * 9, False),
    ("Name the capital of France.", "", "Paris, <b>not</b> Lyon & <script>alert(1)</script>", False),
    ("Explain photosynthesis simply.", "", "Plants turn light, water and CO2 into sugar and oxygen. " * 4, False),
]
MODELS = [("m-small", 100), ("m-large", 300)]
#: The prompt set: the sample's fields and "Rating:" are shared, the questions set the prompts apart.
QUESTIONS = [
    "How well does the response follow the instruction? Answer 1 to 5.",
    "Rate the accuracy of <the> response & its facts.",
    "Helpful?",
]
N_PROMPTS = len(QUESTIONS)
#: The labels the page gives the prompts: the first six words of each question.
LABELS = ["How well does the response follow…", "Rate the accuracy of <the> response…", "Helpful?"]
MISSING = (4, "m-large", 2)  # (sample index, model, prompt position): never scored
FAILED = (7, "m-small", 0)  # scored, failed
TOP = 0.5


def build_fixture(engine: sa.Engine) -> dict[str, list[int]]:
    """Insert the scored store; returns the sample ids of dataset `demo` in position order."""
    rng = np.random.default_rng(20240216)
    with sa.orm.Session(engine) as s:
        s.execute(sa.delete(Prompt).where(Prompt.set_name == "default"))  # stored by the migrations; ours replace it
        demo, other = Dataset(name="demo", source="test"), Dataset(name="other", source="test")
        s.add_all([demo, other])
        samples = []
        for ins, inp, out, _ in SAMPLES + [("An extra sample only in other.", "", "Extra.", False)]:
            h = hashlib.sha256(f"{ins}\x00{inp}\x00{out}".encode()).hexdigest()
            samples.append(Sample(content_hash=h, instruction=ins, input=inp, output=out, n_chars=len(ins + inp + out)))
        s.add_all(samples)
        models = [
            LLM(name=n, source=f"/models/{n}.gguf", fingerprint=f"{i:064x}", dtype="float32", n_params=p,
                label_ids={"shared-context": [1, 2, 3, 4, 5]}, max_tokens=2048)
            for i, (n, p) in enumerate(MODELS)
        ]  # fmt: skip
        prompts = [
            Prompt(set_name="default", position=i, layout="shared-context", scale=5, text_hash=f"{i:064x}",
                   template=f"Instruction:\n{{instruction}}\n\nResponse:\n{{output}}\n\n{q}\nRating: ")
            for i, q in enumerate(QUESTIONS)
        ]  # fmt: skip
        s.add_all(models + prompts)
        s.flush()
        s.add_all(DatasetSample(dataset_id=demo.id, sample_id=x.id, position=i) for i, x in enumerate(samples[:12]))
        # `other` shares the first sample and has one of its own: neither may leak into `demo`'s report.
        s.add_all([DatasetSample(dataset_id=other.id, sample_id=samples[0].id, position=0),
                   DatasetSample(dataset_id=other.id, sample_id=samples[12].id, position=1)])  # fmt: skip
        for i, sample in enumerate(samples):
            for model in models:
                for prompt in prompts:
                    cell = (i, model.name, prompt.position)
                    if cell == MISSING:
                        continue
                    if cell == FAILED:
                        s.add(Score(sample_id=sample.id, model_id=model.id, prompt_id=prompt.id, status="failed",
                                    error="RuntimeError: NaN in logits"))  # fmt: skip
                        continue
                    p = rng.gamma(0.6, size=5)
                    p = p / p.sum() * rng.uniform(0.3, 0.95)
                    s.add(Score(sample_id=sample.id, model_id=model.id, prompt_id=prompt.id, n_tokens=100,
                                mass=float(p.sum()), **{f"p{k + 1}": float(p[k]) for k in range(5)}))  # fmt: skip
        s.commit()
        return {"demo": [x.id for x in samples[:12]]}


class Tables(HTMLParser):
    """The page's tables (by id, as rows of cell text) and image sources."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[str] = []
        self.links: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._table = a["id"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []
        elif tag == "img":
            self.images.append(a["src"] or "")
        elif tag == "a":
            self.links.append(a["href"] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parse(index: Path) -> Tables:
    page = Tables()
    page.feed(index.read_text(encoding="utf-8"))
    return page


def records(page: Tables, name: str) -> list[dict[str, str]]:
    head, *rows = page.tables[f"table-{name}"]
    return [dict(zip(head, r)) for r in rows]


def num(text: str) -> float:
    return float(text)


def test_the_calculation_heuristic_on_known_instructions() -> None:
    for ins, inp, _, expected in SAMPLES:
        assert is_calculation(ins, inp) is expected, (ins, inp)
    assert not is_calculation("Summarize the article.")  # "sum" is a whole word only
    assert not is_calculation("Sum up the main points.")
    assert is_calculation("Find the sum of the list.", "1, 5, 10")
    assert not is_calculation("List the events of 1914-1918.")  # a range, not a subtraction
    assert not is_calculation("Describe the image.", "https://example.org/a/4/4c/1920x1080.png")
    assert not is_calculation("Divide this list into two paragraphs.")
    assert not is_calculation("Summarize the passage.", "Sales grew 47% while computing costs fell.")
    assert is_calculation("Write a function.", "a = 2 + 3")  # arithmetic counts in the input too
    assert is_calculation("What is 7 - 3?") and is_calculation("What is 10 divided by 2?")
    assert is_calculation("What is the AVERAGE of these numbers?")
    # docs/reports.md quotes this count for the bundled demo set.
    demo = json.loads((Path(__file__).parents[2] / "selectit/data/alpaca_en_demo.json").read_text(encoding="utf-8"))
    assert sum(is_calculation(r["instruction"], r.get("input", "")) for r in demo) == 50


def test_report_files_tables_and_images(engine: sa.Engine, db_url: str, tmp_path: Path) -> None:
    ids = build_fixture(engine)["demo"]
    out = tmp_path / "reports" / "report"
    result = build_report(db_url, "demo", out, top=TOP)

    # Files: the page, a PNG per plot and a CSV per table, nothing half-written left beside them.
    assert result.index == out / "index.html" and result.index.exists()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted(result.pngs)
    assert len(pngs) == 8  # coverage, S_model, S_sent, S_token, prompt and model agreement, length, calculation
    assert sorted(p.name for p in out.parent.iterdir()) == ["report"]
    page = parse(result.index)
    assert sorted(page.images) == pngs  # every image written is on the page, and every one on the page exists
    for png in pngs:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csvs = [link for link in page.links if link.endswith(".csv")]
    assert csvs and all((out / c).exists() for c in csvs)

    # The tables on the page and their CSVs hold the same numbers.
    for name, table in result.tables.items():
        with (out / f"{name}.csv").open(encoding="utf-8") as f:
            from_csv = list(csv.reader(f))
        assert from_csv[0] == table.columns
        assert len(page.tables[f"table-{name}"]) == len(table.rows) + 1
        assert len(from_csv) == len(table.rows) + 1

    header = {r[0]: r[1] for r in page.tables["table-header"]}
    assert header["dataset"] == "demo (12 samples)"
    assert header["models (θ, θ/Σθ)"] == "m-large (θ=300, 0.750); m-small (θ=100, 0.250)"
    assert header["prompt set"] == "default (3 prompts)"
    assert header["α"] == "0.2" and header["formula"] == "paper" and header["top share"] == "0.5"

    # Coverage: one missing cell (m-large) and one failed cell (m-small), each spoils one sample.
    coverage = {r["model"]: r for r in records(page, "coverage")}
    assert {k: coverage["m-small"][k] for k in ("samples", "complete", "missing", "failed")} == {
        "samples": "12", "complete": "11", "missing": "0", "failed": "1"}  # fmt: skip
    assert {k: coverage["m-large"][k] for k in ("samples", "complete", "missing", "failed")} == {
        "samples": "12", "complete": "11", "missing": "1", "failed": "0"}  # fmt: skip
    assert (coverage["m-small"]["cells_ok"], coverage["m-small"]["cells_failed"]) == ("35", "1")
    assert (coverage["m-large"]["cells_ok"], coverage["m-large"]["cells_missing"]) == ("35", "1")
    assert coverage["rankable (all models)"]["complete"] == "10"

    # Selected vs full: recomputed from the fixture and the fusion's own ranking.
    con = fusion.connect(db_url)
    ranking_sql = "SELECT sample_id FROM ranking WHERE dataset = 'demo' ORDER BY rank"
    ranked = [r[0] for r in con.execute(ranking_sql).fetchall()]
    token = con.execute("SELECT model, position, sample_id, s_token FROM token_scores").df()
    sent = con.execute("SELECT model, sample_id, s_sent, n_prompts FROM sentence_scores").df()
    con.close()
    assert len(ranked) == 10 and set(ranked) <= set(ids)
    assert ids[MISSING[0]] not in ranked and ids[FAILED[0]] not in ranked
    selected = ranked[: int(TOP * len(ranked))]
    by_id = dict(zip(ids, SAMPLES))
    groups = {"full dataset": ids, "rankable": ranked, "selected": selected}
    lengths = {r["group"]: r for r in records(page, "length_summary")}
    calc = {r["group"]: r for r in records(page, "calculation_share")}
    for group, members in groups.items():
        chars = [len(by_id[i][2]) for i in members]
        assert int(lengths[group]["samples"]) == len(members)
        assert num(lengths[group]["mean"]) == pytest.approx(statistics.mean(chars), abs=0.01)
        assert num(lengths[group]["median"]) == pytest.approx(statistics.median(chars), abs=0.01)
        n_calc = sum(by_id[i][3] for i in members)
        assert (int(calc[group]["samples"]), int(calc[group]["calculation"])) == (len(members), n_calc)
        assert num(calc[group]["share"]) == pytest.approx(n_calc / len(members), abs=1e-4)
    assert calc["full dataset"]["calculation"] == "5"
    assert result.n_selected == len(selected) == 5

    # Histograms count every complete sentence score of the dataset (11 per model).
    hist = records(page, "s_sent_histogram")
    assert sum(int(r["m-small"]) for r in hist) == 11 and sum(int(r["m-large"]) for r in hist) == 11
    length_hist = records(page, "length_histogram")
    assert sum(int(r["selected"]) for r in length_hist) == 5 and sum(int(r["full dataset"]) for r in length_hist) == 12

    # Agreement: Spearman ρ recomputed with pandas from the fusion views, for the demo samples.
    token = token[token.sample_id.isin(ids)]
    prompt_rho = {(r["model"], r["prompt"]): r for r in records(page, "prompt_agreement")}
    for model, _ in MODELS:
        wide = token[token.model == model].pivot(index="sample_id", columns="position", values="s_token").dropna()
        rho = wide.corr(method="spearman")
        assert int(prompt_rho[(model, LABELS[0])]["n"]) == len(wide) == 11
        for a in range(N_PROMPTS):
            for b in range(N_PROMPTS):
                assert num(prompt_rho[(model, LABELS[a])][LABELS[b]]) == pytest.approx(
                    rho.loc[a, b], abs=1e-4
                )
    sent = sent[sent.sample_id.isin(ids) & (sent.n_prompts == N_PROMPTS)]
    wide = sent.pivot(index="sample_id", columns="model", values="s_sent").dropna()
    model_rho = {r["model"]: r for r in records(page, "model_agreement")}
    assert int(model_rho["m-small"]["n"]) == len(wide) == 10
    expected = wide.corr(method="spearman").loc["m-small", "m-large"]
    assert num(model_rho["m-small"]["m-large"]) == pytest.approx(expected, abs=1e-4)
    assert num(model_rho["m-large"]["m-large"]) == pytest.approx(1.0)


def test_report_command_replaces_its_own_report(engine: sa.Engine, cli, tmp_path: Path) -> None:
    build_fixture(engine)
    out = tmp_path / "reports" / "report"
    first = cli("report", "--dataset", "demo", "--out", out, "--models", "m-small", "--top", "0.2")
    assert first.exit_code == 0, first.output
    assert f"{out / 'index.html'}" in first.output.replace("\n", "")
    header = {r[0]: r[1] for r in parse(out / "index.html").tables["table-header"]}
    assert header["models (θ, θ/Σθ)"] == "m-small (θ=100, 1.000)"
    # Only m-small is chosen: the failed cell is the only thing that keeps a sample out.
    assert header["rankable samples"] == "11" and header["selected samples"] == "2"

    second = cli("report", "--dataset", "demo", "--out", out, "--alpha", "0.5", "--formula", "reference-code",
                 "--weights", "m-small=3,m-large=1")  # fmt: skip
    assert second.exit_code == 0, second.output
    header = {r[0]: r[1] for r in parse(out / "index.html").tables["table-header"]}
    assert (header["α"], header["formula"], header["rankable samples"]) == ("0.5", "reference-code", "10")
    assert header["models (θ, θ/Σθ)"] == "m-large (θ=1, 0.250); m-small (θ=3, 0.750)"
    assert sorted(p.name for p in out.parent.iterdir()) == ["report"]  # no temporary or old copies left


def test_report_errors_say_what_to_do(engine: sa.Engine, cli, tmp_path: Path) -> None:
    build_fixture(engine)
    result = cli("report", "--dataset", "nope", "--out", tmp_path / "r")
    assert result.exit_code == 1
    assert result.output == (
        "Error: no dataset named 'nope' (datasets: demo, other); "
        "ingest one with `selectit ingest FILE --dataset nope`\n"
    )
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    result = cli("report", "--dataset", "demo", "--out", busy)
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {busy} exists and is not a selectit report; choose another --out or empty it first.\n"
    )
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    result = cli("report", "--dataset", "demo", "--out", tmp_path / "r", "--top", "1.5")
    assert result.exit_code == 1
    assert result.output == "Error: --top must be a share in (0, 1], e.g. 0.2 for the top 20%; got 1.5\n"


def _independent_sent(db_url: str, ids: list[int]) -> dict[tuple[str, int], float]:
    """(model, sample) → S_sent of the complete samples, read from the fusion's view."""
    con = fusion.connect(db_url)
    rows = con.execute("SELECT model, sample_id, s_sent FROM sentence_scores WHERE n_prompts = ?", [N_PROMPTS]).fetchall()
    con.close()
    return {(m, s): v for m, s, v in rows if s in ids}


def test_examples_show_the_head_and_tail_of_the_ranking_with_their_scores(engine, db_url: str, tmp_path: Path) -> None:
    """Through the API: the top and bottom samples, their S_model (the rank's), each model's S_sent,
    texts cut to a few lines and escaped."""
    ids = build_fixture(engine)["demo"]
    with selectit.open(db_url) as store:
        result = store.report("demo", tmp_path / "rep", top=TOP)
        ranking = store.rank("demo").to_pylist()
    sent = _independent_sent(db_url, ids)
    by_id = dict(zip(ids, SAMPLES))
    page = parse(result.index)
    top, bottom = records(page, "examples_top"), records(page, "examples_bottom")
    assert len(ranking) == 10 and len(top) == len(bottom) == 10  # 10 rankable: both lists hold all of them
    for shown, expected in ((top, ranking[:10]), (bottom, ranking[-10:])):
        assert [int(r["sample"]) for r in shown] == [r["sample_id"] for r in expected]
        for row, r in zip(shown, expected):
            assert int(row["rank"]) == r["rank"]
            assert num(row["S_model"]) == pytest.approx(r["s_model"], rel=1e-5)  # 6 significant digits
            for model, _ in MODELS:
                assert num(row[f"S_sent {model}"]) == pytest.approx(sent[(model, r["sample_id"])], rel=1e-5)
            instruction, _, output, _ = by_id[r["sample_id"]]
            assert row["instruction"] == instruction
            lines = output.splitlines()
            if len(output) > 300:  # cut to 300 characters
                assert row["output"] == output[:300].rstrip() + "…"
            elif len(lines) > 4:  # cut to 4 lines
                assert row["output"] == "\n".join(lines[:4]) + "…"
            else:
                assert row["output"] == output.strip()
    cut = {by_id[int(r["sample"])][0]: r["output"] for r in top}
    assert cut["Give three tips for staying healthy."] == "1. Eat well.\n2. Sleep enough.\n3. Move every day.\n1. Eat well.…"
    assert cut["Describe the water cycle."].endswith("…") and len(cut["Describe the water cycle."]) <= 301
    html_text = result.index.read_text(encoding="utf-8")
    assert "Paris, &lt;b&gt;not&lt;/b&gt; Lyon &amp; &lt;script&gt;alert(1)&lt;/script&gt;" in html_text
    assert "<script>" not in html_text
    assert result.cutoff == ranking[result.n_selected - 1]["s_model"]  # the score of the last selected row
    assert (tmp_path / "rep" / "examples_top.csv").is_file()


def test_the_s_model_histogram_marks_the_rank_cut_off(engine, db_url: str, cli, tmp_path: Path) -> None:
    """Through the CLI: the cut-off on the page is the score of the last selected row of `selectit rank`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from selectit.report.data import gather
    from selectit.report.sections import s_model_figure

    build_fixture(engine)
    out = tmp_path / "rep"
    done = cli("report", "--dataset", "demo", "--out", out, "--top", "0.3")
    assert done.exit_code == 0, done.output
    ranked = cli("rank", "--dataset", "demo", "--top", "0.3", "--limit", "20")
    assert ranked.exit_code == 0, ranked.output
    assert "selected: 3 of 10 rankable" in ranked.output
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in ranked.output.splitlines() if line.startswith("│")]
    scores = {int(c[0]): c[3] for c in cells if c[0].isdigit()}  # rank → score as `rank` prints it (6 decimals)
    assert sorted(scores) == [1, 2, 3]  # the rows the top share keeps
    page = parse(out / "index.html")
    header = {r[0]: r[1] for r in page.tables["table-header"]}
    assert header["selected samples"] == "3"
    assert header["S_model cut-off"] == scores[3]
    hist = records(page, "s_model_histogram")
    assert sum(int(r["rankable"]) for r in hist) == 10 and sum(int(r["selected"]) for r in hist) == 3
    assert all(num(r["bin_to"]) >= float(scores[3]) for r in hist if int(r["selected"]))
    assert "s_model.png" in page.images
    top = records(page, "examples_top")
    assert [r["sample"] for r in top[:3]] == [scores_row[1] for scores_row in (
        next(c for c in cells if c[0] == str(rank)) for rank in (1, 2, 3))]  # the head of `selectit rank`
    assert [r["S_model"] for r in top[:3]] == [f"{float(scores[k]):.6g}" for k in (1, 2, 3)]

    # The plot's dashed line stands at the same S_model.
    con = fusion.connect(db_url, top=0.3)
    try:
        d = gather(con, "demo")
    finally:
        con.close()
    fig = s_model_figure(plt, d)
    (line,) = fig.axes[0].lines
    assert line.get_xdata()[0] == pytest.approx(float(scores[3]), abs=5e-7) and line.get_linestyle() == "--"
    plt.close(fig)


def test_prompts_are_labelled_with_their_first_words(engine, db_url: str, cli, tmp_path: Path) -> None:
    """CLI and API: the labels are the prompts' own first words (stored texts), not "prompt 1..3"."""
    build_fixture(engine)
    done = cli("report", "--dataset", "demo", "--out", tmp_path / "cli")
    assert done.exit_code == 0, done.output
    with selectit.open(db_url) as store:
        result = store.report("demo", tmp_path / "api")
    assert list(result.prompt_labels) == LABELS
    for out in (tmp_path / "cli", tmp_path / "api"):
        page = parse(out / "index.html")
        header = {r[0]: r[1] for r in page.tables["table-header"]}
        assert [header[f"prompt {i + 1}"] for i in range(N_PROMPTS)] == LABELS
        agreement = records(page, "prompt_agreement")
        assert [r["prompt"] for r in agreement if r["model"] == "m-small"] == LABELS
        assert page.tables["table-prompt_agreement"][0][3:] == LABELS
        series = [r["series"] for r in records(page, "s_token_summary")]
        assert series == [f"{label} · {m}" for label in LABELS for m in ("m-large", "m-small")]
        assert "prompt 1" not in (out / "index.html").read_text(encoding="utf-8").replace(">prompt 1<", "")
    assert "Rate the accuracy of &lt;the&gt; response…" in (tmp_path / "api" / "index.html").read_text(encoding="utf-8")


def test_prompt_labels_of_the_built_in_set_and_of_identical_texts() -> None:
    from selectit.report.data import prompt_labels

    head = "Below is an instruction.\n\n### Instruction:\n{instruction}\n\n### Response:\n{output}\n\n"
    questions = ["How well does the response follow the instruction?", "Rate the accuracy from 1 to 5."]
    assert prompt_labels([head + q + "\nRating: " for q in questions]) == [
        "How well does the response follow…", "Rate the accuracy from 1 to…"]  # fmt: skip
    assert prompt_labels(["Rate it: {output}", "Rate it: {output}"]) == ["Rate it: (#1)", "Rate it: (#2)"]
    assert prompt_labels(["Is {output} good?"]) == ["Is good?"]


def test_the_default_prompt_set_is_labelled_as_the_docs_say(sqlite_url: str) -> None:
    from selectit.report.data import prompt_labels
    from selectit.store import db

    db.upgrade(sqlite_url)  # the migration stores the default set
    engine = db.open_store(sqlite_url)
    with sa.orm.Session(engine) as s:
        templates = s.scalars(sa.select(Prompt.template).where(Prompt.set_name == "default").order_by(Prompt.position))
        labels = prompt_labels(list(templates))
    engine.dispose()
    assert labels[:2] == ["How well does the response follow…", "Rate the accuracy of the response…"]
    assert len(labels) == len(set(labels)) == 5
    page = (Path(__file__).parents[2] / "docs" / "reports.md").read_text(encoding="utf-8")
    assert '"How well does the response follow…",\n"Rate the accuracy of the response…"' in page


def _overlaps(a, b) -> bool:  # noqa: ANN001 - matplotlib Bbox
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_the_coverage_legend_covers_no_bar(engine, db_url: str, tmp_path: Path) -> None:
    """The legend's extent on the drawn figure meets no bar, for the fixture's coverage (bars of the
    full width) and for bars of every length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from selectit.report.data import gather
    from selectit.report.sections import coverage_figure

    build_fixture(engine)
    con = fusion.connect(db_url)
    try:
        fixture = gather(con, "demo").coverage
    finally:
        con.close()
    assert [r[1] for r in fixture] == [12, 12]
    cases = [fixture, [("a", 10, 10, 0, 0), ("b", 10, 0, 10, 0), ("c", 10, 0, 0, 10)],
             [("only", 5, 1, 1, 3)], [(f"m{i}", 9, i, 9 - i, 0) for i in range(10)]]
    for coverage in cases:
        fig = coverage_figure(plt, [tuple(r) + (0, 0, 0) if len(r) == 5 else r for r in coverage])
        fig.tight_layout()
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        legend = ax.get_legend().get_window_extent(renderer)
        bars = [p.get_window_extent(renderer) for p in ax.patches if p.get_width() > 0]
        assert bars and not any(_overlaps(legend, bar) for bar in bars), coverage
        plt.close(fig)


def test_the_report_directory_gets_the_usual_mode(engine, db_url: str, tmp_path: Path) -> None:
    """Through the API under umask 022: the directory 0755 and the files 0644, not a temporary's 0700/0600."""
    import os
    import stat

    build_fixture(engine)
    old = os.umask(0o022)
    try:
        with selectit.open(db_url) as store:
            result = store.report("demo", tmp_path / "new" / "rep")
    finally:
        os.umask(old)
    out = tmp_path / "new" / "rep"
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert stat.S_IMODE(result.index.stat().st_mode) == 0o644
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o644}


def test_conversations_get_s_sent_by_turn_position_and_their_weakest_turn(cli, db_url: str, tmp_path: Path) -> None:
    """Real ShareGPT conversations with every turn rated, the earlier turns a little lower: the
    plot's table is the mean and quartiles of the formula's S_sent per turn position, and each
    example conversation names its weakest turn."""
    from test_export import ok, score_everything
    from test_turns import sharegpt_records

    from selectit.formulas import token_score

    path = tmp_path / "sg.json"
    path.write_text(json.dumps(sharegpt_records(40)), encoding="utf-8")
    ok(cli("ingest", path, "--dataset", "sg", "--format", "sharegpt", "--skip-invalid"))
    score_everything(db_url)
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:  # turn t (counted back from the last) has p2 / (1 + t)
        conn.execute(sa.text("UPDATE scores SET p2 = p2 / (1 + turn)"))
        cells: dict[tuple[int, int], list[float]] = {}
        n_turns = dict(conn.execute(sa.text("SELECT id, n_turns FROM samples")).all())
        for sid, turn, p1, p2, p3 in conn.execute(sa.text("SELECT sample_id, turn, p1, p2, p3 FROM scores")):
            cells.setdefault((sid, turn), []).append(token_score((p1, p2, p3))[1])
    engine.dispose()
    s_sent = {key: float(np.mean(v) / (1 + 0.2 * np.std(v))) for key, v in cells.items()}
    by_position: dict[int, list[float]] = {}
    for (sid, turn), s in s_sent.items():
        if n_turns[sid] > 1:
            by_position.setdefault(n_turns[sid] - turn, []).append(s)
    out = tmp_path / "rep"
    ok(cli("report", "--dataset", "sg", "--prompt-set", "s", "--out", out))
    page = parse(out / "index.html")
    rows = {int(r["turn"]): r for r in records(page, "s_sent_by_turn")}
    assert set(rows) == set(by_position) and len(rows) >= 4
    for position, values in by_position.items():
        r = rows[position]
        assert int(r["turns rated"]) == len(values)
        assert num(r["mean"]) == pytest.approx(np.mean(values), rel=1e-5)  # shown to 6 digits
        assert num(r["median"]) == pytest.approx(np.median(values), rel=1e-5)
    assert (out / "s_sent_by_turn.png").is_file()
    shown = [r for r in records(page, "examples_top") + records(page, "examples_bottom") if r["weakest turn A"]]
    assert shown
    for r in shown:
        sid = int(r["sample"])
        mine = {n_turns[sid] - t: s for (x, t), s in s_sent.items() if x == sid}
        position = min(mine, key=lambda p: (mine[p], p))
        assert r["weakest turn A"] == f"{position} of {n_turns[sid]}: {mine[position]:.4f}"
