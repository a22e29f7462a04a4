"""`laser reproduce`: one resumable search per benchmark under the paper protocol, with the search's speed options,
and table1.md beside the paper's figures (Tables 1 and 4, the edits of Tables 5 and 6, the slides' RoBERTa rows)."""

from __future__ import annotations

import json

import pytest

from laserlm.analysis.table1 import paper_key, paper_rows, table1, tables
from laserlm.cli.main import main

from conftest import cloze_rows


def _argv(model, data, out, *extra):
    return ["reproduce", str(model), "--benchmarks", "hotpotqa,bb_epistemic,fever", "--data-dir", str(data),
            "--layers", "1-2", "--rhos", "0.5,0.1", "--limit", "20", "--no-svd-cache", "-o", str(out), *extra]


@pytest.fixture
def data(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    rows = [{"question": r["prompt"], "answer": r["answer"]} for r in cloze_rows(60, seed=2)]
    (folder / "hotpotqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_reproduce_writes_table1_and_resumes(tiny_with_tokenizer, data, tmp_path, capsys):
    out = tmp_path / "t1"
    argv = _argv(tiny_with_tokenizer, data, out)
    assert main(argv) == 0
    text = (out / "table1.md").read_text()
    assert "| hotpotqa | gen01_paper | 12 / 20 |" in text and "| bb_epistemic | acc | 20 / 20 |" in text
    assert "| fever | - | cannot load" in text  # a hub benchmark without data: the others still run
    assert "paper gain: RoBERTa | GPT-J | Llama-2 |" in text  # not a paper model: the paper's gains beside ours
    assert "| +2.3 | +6.0 | +5.2 |" in text  # FEVER: 52.3 - 50.0, 56.2 - 50.2, 64.5 - 59.3
    assert (out / "figure7.png").stat().st_size > 1000
    best = json.loads((out / "bb_epistemic" / "best.json").read_text())
    assert best["metric"] == "acc" and set(best["base"]["test_metrics"]) == {"acc", "logloss", "choice_logloss"}
    assert best["best"]["test_diff"] == pytest.approx(best["best"]["test"] - best["base"]["test"])
    # Figure 7's grid, by hand from results.jsonl: a rate's best gain per (type, layer) in points, a loss's decrease
    from laserlm.analysis.table1 import figure7_grid

    grid = figure7_grid(out, {"bb_epistemic": {"metric": "acc"}, "hotpotqa": {"metric": "logloss"}})
    for name, metric, scale in (("bb_epistemic", "acc", 100), ("hotpotqa", "logloss", -1)):
        rows = [json.loads(line) for line in (out / name / "results.jsonl").read_text().splitlines()]
        base = next(r["metrics"][metric] for r in rows if not r["edits"])
        want = {}
        for r in rows:
            if len(r["edits"]) == 1:
                key = (r["edits"][0]["type"], r["edits"][0]["layer"])
                want.setdefault(key, []).append(scale * (r["metrics"][metric] - base))
        assert grid[name] == pytest.approx({k: max(v) for k, v in want.items()}) and want
    run = json.loads((out / "hotpotqa" / "run.json").read_text())
    assert run["protocol"] == "paper" and run["metrics"] == ["gen01_paper", "logloss", "top1"]
    assert run["min_new_tokens"] == 1 and run["gen_tokens"] == 15  # the authors' generate(min_new_tokens=1)
    before = {p: (out / p / "results.jsonl").read_text() for p in ("hotpotqa", "bb_epistemic")}
    assert main(argv) == 0  # resumes: nothing is evaluated again
    assert {p: (out / p / "results.jsonl").read_text() for p in before} == before
    assert "swept 0 candidates" in capsys.readouterr().out


def test_reproduce_takes_the_speed_options_of_search(tiny_with_tokenizer, data, tmp_path, capsys):
    out = tmp_path / "fast"
    argv = _argv(tiny_with_tokenizer, data, out, "--halving", "2")
    argv[argv.index("--limit") + 1] = "80"
    assert main(argv) == 0
    rounds = [json.loads(line)["n"] for line in (out / "bb_epistemic" / "halving.jsonl").read_text().splitlines()]
    assert rounds and max(rounds) == 40 < json.loads((out / "bb_epistemic" / "run.json").read_text())["val_rows"]["n"]
    before = (out / "bb_epistemic" / "results.jsonl").read_text()
    assert main(argv) == 0 and (out / "bb_epistemic" / "results.jsonl").read_text() == before
    assert main(_argv(tiny_with_tokenizer, data, tmp_path / "p", "--prescreen", "snr", "--budget", "2")) == 0
    rows = (tmp_path / "p" / "bb_epistemic" / "results.jsonl").read_text().splitlines()
    assert len(rows) == 1 + 2
    assert main(_argv(tiny_with_tokenizer, data, tmp_path / "x", "--prescreen", "snr")) == 2
    assert "give both" in capsys.readouterr().err


def test_the_paper_figures_and_their_aliases():
    assert paper_key("EleutherAI/gpt-j-6b") == paper_key("/models/gpt-j-6b") == "gptj"
    assert paper_key("meta-llama/Llama-2-7b-hf") == paper_key("llama-2-7b") == "llama2"
    assert paper_key("demo") is None
    rows = paper_rows("llama2")
    assert rows["bb_epistemic"]["base"] == [44.8, 0.62] and rows["bb_epistemic"]["laser"] == [63.4, 0.78]
    assert rows["fever"]["edit"] == ["mlp_in", 30, 0.2]
    roberta = paper_rows("roberta")
    assert roberta["hotpotqa"]["base"] == [6.5, 22.38] and "6.1 / 10.99" in roberta["hotpotqa"]["notes"][0]
    assert roberta["bb_wikidata"]["laser"] == [30.7, 7.69] and "slides" in roberta["bb_wikidata"]["notes"][0]


def test_a_gptj_table_shows_every_figure_of_the_paper(tmp_path):
    t = tables()
    paper = {**t["table1"]["rows"]["gptj"], **t["table4"]["rows"]["gptj"]}
    edits = t["table5_table6_selected_edit"]["gptj"]
    assert len(paper) == len(edits) == 8
    results = {}
    for i, (name, row) in enumerate(paper.items()):
        base, laser = (row["base"][0] + 1) / 100, (row["laser"][0] + 2) / 100  # ours: 1 and 2 points above
        kind = edits[name][0] if edits[name][0] != "mlp" else "mlp_in"
        results[name] = {"metric": "acc", "n_val": 10, "n_test": 40, "grid": "the authors'",
                         "base": {"test": base, "test_metrics": {"logloss": 1.0}},
                         "best": {"test": laser, "test_diff": laser - base, "test_ci": [0.001, 0.04],
                                  "test_p_mcnemar": 0.03, "test_metrics": {"logloss": 0.9},
                                  "edits": [{"method": "svd", "type": kind, "layer": edits[name][1],
                                             "amount": edits[name][2]}]}}
    text = table1("EleutherAI/gpt-j-6b", results, {}, 1.0)
    assert "GPT-J's (Tables 1 and 4" in text
    counterfact = "| counterfact | acc | 10 / 40 | 13.1 | 24 | +10.9 | 14.1 | 26.0 | +11.9 [+0.1, +4.0], p 0.03 | +1.0 | +2.0 |"
    assert counterfact in text
    assert "| counterfact | 5.78 | 5.05 | 1.000 | 0.900 | (mlp_in, 27, 0.01) | (mlp_in, 27, 0.01) | the authors' |" in text
    assert "| bb_epistemic | 0.74 | 0.73 |" in text and "(U, 26, 0.01)" in text
    for name, row in paper.items():
        lines = [line for line in text.splitlines() if line.startswith(f"| {name}")]
        assert len(lines) == 2, name
        cells = [c.strip() for line in lines for c in line.strip("|").split("|")]
        assert "-" not in cells, (name, lines)
        for value in (*row["base"], *row["laser"]):
            assert f"{value:g}" in cells, (name, value)
        assert f"({edits[name][0] if edits[name][0] != 'mlp' else 'U'}, {edits[name][1]}, {edits[name][2]:g})" in cells


def test_figure7_marks_cells_never_evaluated_and_cells_halving_stopped(tmp_path):
    """A benchmark folder written by hand: layer 0 evaluated on all of val, layer 1 stopped by halving on 10 rows,
    layer 2 never evaluated. The early cell shows its gain on its own rows; the other two are not "no change"."""
    import matplotlib.image

    from laserlm.analysis.table1 import figure7, figure7_early, figure7_grid

    def row(edits, n, acc):
        return json.dumps({"key": f"{edits}-{n}", "edits": edits, "split": "val", "n": n, "metrics": {"acc": acc}})

    def edit(layer, amount):
        return [{"method": "svd", "type": "mlp_in", "layer": layer, "amount": amount}]

    folder = tmp_path / "bb_epistemic"
    folder.mkdir()
    (folder / "results.jsonl").write_text("\n".join([row([], 40, 0.5), row(edit(0, 0.1), 40, 0.55)]) + "\n")
    (folder / "halving.jsonl").write_text("\n".join([
        row([], 10, 0.4), row([], 20, 0.45), row(edit(0, 0.1), 10, 0.5), row(edit(1, 0.1), 10, 0.7),
        row(edit(1, 0.5), 10, 0.3), row(edit(0, 0.1), 20, 0.5)]) + "\n")
    results = {"bb_epistemic": {"metric": "acc", "layers": [0, 2]}}
    assert figure7_grid(tmp_path, results) == {"bb_epistemic": {("mlp_in", 0): pytest.approx(5.0)}}
    assert figure7_early(tmp_path, results) == {"bb_epistemic": {("mlp_in", 1): pytest.approx(30.0)}}
    image = matplotlib.image.imread(figure7(tmp_path, results))
    grey = (abs(image[..., :3] - 200 / 255) < 0.02).all(-1)
    assert grey.sum() > 200, "the never-evaluated cells are not drawn grey"
