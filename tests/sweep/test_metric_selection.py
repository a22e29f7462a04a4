"""Selection and composition on any metric: `--metric top10 --compose` picks and stacks by top-10."""

from __future__ import annotations

import json

import pytest

from laserlm.cli.main import main
from laserlm.core.edits import Edit
from laserlm.evaluation.metrics import rank_key
from laserlm.sweep.sweeper import best_row, compose

from conftest import cloze_rows


class _Stub:
    """Stacks score the sum of their edits' gains, separately for top1 and top10."""

    def __init__(self, gains):
        self.gains = gains

    def evaluate(self, edits):
        return {"metrics": {m: 0.5 + sum(self.gains[e.layer][m] for e in edits) for m in ("top1", "top10")}
                | {"logloss": 1.0}}


# top1 prefers layer 0 then 1; top10 prefers layer 2 then 3, and layer 0 hurts top10.
GAINS = {0: {"top1": 0.10, "top10": -0.05}, 1: {"top1": 0.05, "top10": 0.0},
         2: {"top1": -0.02, "top10": 0.08}, 3: {"top1": 0.0, "top10": 0.03}}


def _rows():
    stub = _Stub(GAINS)
    return [{"edits": [Edit("svd", "mlp_in", layer, 0.1).to_json()], **stub.evaluate([Edit("svd", "mlp_in", layer, 0.1)])}
            for layer in GAINS]


def test_best_row_follows_the_metric():
    rows = _rows()
    assert best_row(rows, "top1")["edits"][0]["layer"] == 0
    assert best_row(rows, "top10")["edits"][0]["layer"] == 2


def test_compose_stacks_on_the_metric():
    base = {"metrics": {"top1": 0.5, "top10": 0.5, "logloss": 1.0}}
    stack1, row1 = compose(_Stub(GAINS), _rows(), base, "top1")
    stack10, row10 = compose(_Stub(GAINS), _rows(), base, "top10")
    # A layer that ties on the selection metric joins when it improves the next one (layer 3 on top10 for
    # top1, layer 1 on top1 for top10); a layer that hurts the selection metric never does.
    assert [e.layer for e in stack1] == [0, 1, 3]
    assert [e.layer for e in stack10] == [2, 3, 1]
    assert row10["metrics"]["top10"] == pytest.approx(0.61) and row1["metrics"]["top1"] == pytest.approx(0.65)


def test_losses_are_minimised_and_ties_fall_to_the_other_metrics():
    a = {"top1": 0.5, "top10": 0.7, "logloss": 2.0}
    b = {"top1": 0.5, "top10": 0.6, "logloss": 1.0}
    assert rank_key(b, "logloss") > rank_key(a, "logloss")
    assert rank_key(a, "top1") > rank_key(b, "top1")  # tie on top1, broken by top10


def test_laser_search_metric_top10_compose(tiny_with_tokenizer, tmp_path):
    task = tmp_path / "rows.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in cloze_rows(300, seed=4)))
    out = tmp_path / "run"
    assert main(["search", str(tiny_with_tokenizer), "-t", str(task), "--layers", "all", "--rhos", "0.5,0.1,k=1",
                 "--metric", "top10", "--compose", "--no-svd-cache", "--select", "paper", "-o", str(out)]) == 0
    best = json.loads((out / "best.json").read_text())
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    singles = [r for r in rows if r["edits"]]
    assert best["metric"] == "top10"
    want = max(singles, key=lambda r: rank_key(r["metrics"], "top10"))
    assert best["best"]["val"] == want["metrics"]["top10"]
    # The composed stack, evaluated afresh by `laser eval` on the same val rows, has the stored metrics.
    stack = [str(Edit.from_json(e)) for e in best["composed"]["edits"]]
    assert stack, "no stack improved on the base model: the check below would test nothing"
    assert main(["eval", str(tiny_with_tokenizer), "-t", str(task), "--split", "val", "--json", str(tmp_path / "c.json"),
                 *sum((["-e", e] for e in stack), [])]) == 0
    again = json.loads((tmp_path / "c.json").read_text())["metrics"]
    assert again["top10"] == best["composed"]["val"] and again["top1"] == best["composed"]["val_metrics"]["top1"]
    assert "Primary metric: `top10`" in (out / "report.md").read_text()
    assert (out / "plot_top10.png").exists()
    # An unknown metric, or one the task cannot have, is refused before any work.
    assert main(["search", str(tiny_with_tokenizer), "-t", str(task), "--metric", "acc", "-o", str(tmp_path / "x")]) == 2
