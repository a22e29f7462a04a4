"""`laser compress`: the greedy stack takes the largest saving first and keeps the val metric; its factorized folder
has fewer parameters and scores what the stack scored; a rerun resumes with nothing redone."""

from __future__ import annotations

import json

import pytest

import laserlm.sweep.compress as compress
from laserlm import Edit, load_model
from laserlm.cli.main import main
from laserlm.models.factorized import ClusteredLowRankLinear, LowRankLinear
from laserlm.sweep.compress import greedy_stack, keeps

from conftest import cloze_rows


class _Stacks:
    """Stacks score the sum of their edits' effects on top1."""

    def __init__(self, effect):
        self.effect, self.seen = effect, []

    def evaluate(self, edits):
        self.seen.append([str(e) for e in edits])
        return {"metrics": {"top1": 0.5 + sum(self.effect[str(e)] for e in edits)}}


def test_the_greedy_stack_takes_the_largest_saving_that_keeps_the_metric(monkeypatch):
    effect = {"mlp_in:0:0.1": -0.01, "mlp_in:0:0.5": 0.01, "mlp_out:1:0.1": -0.01, "mlp_out:1:0.5": 0.0,
              "mlp_in:2:0.1": -0.05}
    savings = {"mlp_in:0:0.1": 900, "mlp_in:0:0.5": 500, "mlp_out:1:0.1": 800, "mlp_out:1:0.5": 400,
               "mlp_in:2:0.1": 1000}
    monkeypatch.setattr(compress, "saving", lambda layout, cache, e: savings[str(e)])
    singles = [{"edits": [Edit("svd", t, layer, a).to_json()], "metrics": {"top1": 0.5 + effect[f"{t}:{layer}:{a}"]}}
               for t, layer, a in (("mlp_in", 0, 0.1), ("mlp_in", 0, 0.5), ("mlp_out", 1, 0.1), ("mlp_out", 1, 0.5),
                                   ("mlp_in", 2, 0.1))]
    base = {"metrics": {"top1": 0.5}}
    stacks = _Stacks(effect)
    out = greedy_stack(stacks, singles, base, "top1", 0.015, None, None)
    # mlp_in:2:0.1 costs 0.05 alone: never tried. mlp_in:0:0.1 (900) first; mlp_out:1:0.1 (800), fine alone, brings
    # the stack to -0.02 < -0.015: rejected; mlp_in:0:0.5 is the same matrix; mlp_out:1:0.5 (400) keeps it.
    assert [str(Edit.from_json(e)) for e in out.path[-1]["edits"]] == ["mlp_in:0:0.1", "mlp_out:1:0.5"]
    assert stacks.seen == [["mlp_in:0:0.1", "mlp_out:1:0.1"], ["mlp_in:0:0.1", "mlp_out:1:0.5"]]
    assert [p["removed"] for p in out.path] == [0, 900, 1300] and out.tried == 3
    assert keeps({"logloss": 2.05}, {"logloss": 2.0}, "logloss", 0.1, True)
    assert not keeps({"logloss": 2.2}, {"logloss": 2.0}, "logloss", 0.1, True)


def test_compress_writes_a_smaller_factorized_model_that_scores_the_same(tiny_with_tokenizer, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in cloze_rows(300, seed=4)))
    out = tmp_path / "c"
    argv = ["compress", str(tiny_with_tokenizer), "-t", str(rows), "--metric", "top10", "--rhos", "0.5,0.25,k=1",
            "--methods", "svd,cluster2", "--no-svd-cache", "-o", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "compress.json").read_text())
    base, comp = summary["base"], summary["compressed"]
    assert summary["stack"] and comp["parameters"] < base["parameters"]
    assert comp["val"]["top10"] >= base["val"]["top10"]  # --tolerance 0: never worse on val
    assert comp["val_reloaded"] == pytest.approx(comp["val"], abs=1e-5)  # the folder scores what the stack scored
    loaded = load_model(str(out / "model"))
    factored = [m for m in loaded.model.modules() if isinstance(m, (LowRankLinear, ClusteredLowRankLinear))]
    assert len(factored) == len(summary["stack"])
    assert sum(p.numel() for p in loaded.model.parameters()) == comp["parameters"]
    removed = [p["removed"] for p in summary["path"]]
    assert removed == sorted(removed) and removed[-1] == base["parameters"] - comp["parameters"]
    # The test interval is the paired bootstrap of the stored per-row test values, recomputed here.
    from laserlm.evaluation.stats import paired_bootstrap

    tests = [json.loads(line) for line in (out / "search" / "test.jsonl").read_text().splitlines()]
    base_row = next(r for r in tests if not r["edits"])
    key = sorted(json.dumps(e, sort_keys=True) for e in summary["stack"])
    stack_row = next(r for r in tests if sorted(json.dumps(e, sort_keys=True) for e in r["edits"]) == key)
    assert comp["test_ci"] == paired_bootstrap(base_row["per_row"]["top10"], stack_row["per_row"]["top10"])["ci"]
    assert (out / "compress.png").stat().st_size > 1000 and "parameters kept" in (out / "compress.md").read_text()
    stacks = (out / "search" / "stack.jsonl").read_text()
    assert main(argv) == 0  # resumed: no single or stack evaluated again
    assert (out / "search" / "stack.jsonl").read_text() == stacks
    assert json.loads((out / "compress.json").read_text())["stack"] == summary["stack"]
