"""The analyses against hand computations, and flips against `laser eval --predictions`."""

from __future__ import annotations

import json
import math

import pytest
import torch

from laserlm.analysis.analyses import complement, curve_landmarks, effective_rank, generic_share
from laserlm.cli.main import main
from laserlm.core.edits import Edit

from conftest import cloze_rows


def test_effective_rank_by_hand():
    p = torch.tensor([0.75, 0.25])
    assert effective_rank(torch.tensor([3.0, 1.0])) == pytest.approx(math.exp(-(p * p.log()).sum().item()))
    assert effective_rank(torch.tensor([3.0, 1.0])) == pytest.approx(1.7548, abs=1e-4)
    assert effective_rank(torch.ones(7) * 2.5) == pytest.approx(7.0)
    assert effective_rank(torch.tensor([5.0, 0.0, 0.0])) == pytest.approx(1.0)


def test_complement_keeps_the_removed_components():
    assert complement(Edit("svd", "mlp_in", 3, 0.1), (64, 32)) == Edit("bottom", "mlp_in", 3, "k=29")
    assert complement(Edit("svd", "mlp_in", 3, "k=30"), (64, 32)) == Edit("bottom", "mlp_in", 3, "k=2")


def test_generic_share_and_curve_landmarks():
    assert generic_share([" the", " of", " Paris", "."]) == 0.75
    rows = [{"removed": 0, "top1": 0.2, "logloss": 3}, {"removed": 0.5, "top1": 0.2, "logloss": 3},
            {"removed": 0.9, "top1": 0.3, "logloss": 3}, {"removed": 0.99, "top1": 0.1, "logloss": 4}]
    assert curve_landmarks(rows, "top1") == {"base": 0.2, "first_improves_at_removed": 0.9, "best_removed": 0.9,
                                             "best": 0.3, "first_degrades_at_removed": 0.99}


def test_spectrum_json(tiny_with_tokenizer, tmp_path):
    out = tmp_path / "s.json"
    assert main(["analyze", "spectrum", str(tiny_with_tokenizer), "--json", str(out), "-o", str(tmp_path / "a")]) == 0
    table = json.loads(out.read_text())
    assert [(r["type"], r["layer"]) for r in table][:2] == [("mlp_in", 0), ("mlp_out", 0)]
    assert all(1 <= r["effective_rank"] <= min(r["shape"]) for r in table)
    assert (tmp_path / "a" / "effective_rank.png").exists()


def test_flips_agree_with_eval_predictions(tiny_with_tokenizer, tmp_path):
    task = tmp_path / "rows.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in cloze_rows(300, seed=11)))
    run = tmp_path / "run"
    assert main(["search", str(tiny_with_tokenizer), "-t", str(task), "--layers", "all", "--rhos", "0.5,0.1,k=1",
                 "--no-svd-cache", "-o", str(run)]) == 0
    best = json.loads((run / "best.json").read_text())["best"]["edits"]
    edit = str(Edit.from_json(best[0]))
    preds = {}
    for name, extra in (("base", []), ("edit", ["-e", edit])):
        assert main(["eval", str(tiny_with_tokenizer), "-t", str(task), "--split", "val", *extra,
                     "--predictions", str(tmp_path / f"{name}.jsonl")]) == 0
        preds[name] = [json.loads(x) for x in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    out = tmp_path / "flips.json"
    assert main(["analyze", "flips", str(run), "--json", str(out), "-o", str(tmp_path / "a")]) == 0
    counts = json.loads(out.read_text())["counts"]
    pairs = [(b["top1"], e["top1"]) for b, e in zip(preds["base"], preds["edit"])]
    assert counts == {"both_right": pairs.count((True, True)), "corrected": pairs.count((False, True)),
                      "newly_wrong": pairs.count((True, False)), "both_wrong": pairs.count((False, False))}


def test_curve_and_perplexity_and_components_run(tiny_with_tokenizer, tmp_path):
    task = tmp_path / "rows.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in cloze_rows(100, seed=2)))
    out = tmp_path / "c.json"
    assert main(["analyze", "curve", str(tiny_with_tokenizer), "-t", str(task), "--type", "mlp_in", "--layer", "1",
                 "--json", str(out), "-o", str(tmp_path / "a")]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["removed"] == 0 and rows[-1]["removed"] == pytest.approx(0.9995)
    text = tmp_path / "t.txt"
    text.write_text(" ".join(["the cat sat on the mat and the dog was big"] * 30))
    ppl = tmp_path / "p.json"
    assert main(["analyze", "perplexity", str(tiny_with_tokenizer), "-e", "mlp:all:0.1", "--text", str(text),
                 "--window", "32", "--stride", "16", "--json", str(ppl), "-o", str(tmp_path / "a")]) == 0
    table = json.loads(ppl.read_text())
    assert table["before"] > 1 and table["after"] > 1 and table["tokens"] == 330
    comp = tmp_path / "k.json"
    assert main(["analyze", "components", str(tiny_with_tokenizer), "-t", str(task), "-e", "mlp_in:1:k=2",
                 "--split", "all", "--json", str(comp), "-o", str(tmp_path / "a")]) == 0
    assert json.loads(comp.read_text())["bottom_edit"] == {"method": "bottom", "type": "mlp_in", "layer": 1,
                                                            "amount": "k=30"}
