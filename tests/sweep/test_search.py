"""The sweep: prefix-cached candidates equal plain full forwards; kill -9 and resume; run-folder rules."""

from __future__ import annotations

import json

import pytest
import transformers as tf

from laserlm import get_layout
from laserlm.cli.main import main
from laserlm.core.edits import Edit, edited
from laserlm.evaluation.evaluate import Prepared
from laserlm.evaluation.metrics import rank_key
from laserlm.evaluation.scoring import Scorer
from laserlm.sweep.sweeper import Sweeper, best_row, compose, grid
from laserlm.sweep.store import ResultStore
from laserlm.core.svd import SVDCache
from laserlm.evaluation.tasks import Example, load_task

from conftest import ARCHS, MLM, build_tiny, cloze_rows, kill_when, tiny_tokenizer


def _examples(n=24):
    return [Example(r["prompt"], answers=[r["answer"]]) for r in cloze_rows(n)]


@pytest.mark.parametrize("arch", ARCHS)
def test_prefix_cached_sweep_equals_plain_full_forwards(arch, tmp_path):
    model, tok = build_tiny(arch), tiny_tokenizer(masked=arch in MLM)
    layout = get_layout(model)
    types = [t for t in ("mlp_in", "mlp_out", "attn_o", "attn_qkv", "attn_v") if t in layout.types][:3]
    cands = grid(types, range(3), [0.5, "k=1"], ["svd"]) + grid(["mlp_out"], [1, 2], [0.3], ["prune", "zero"])
    prepared = Prepared(Scorer(model, tok, max_tokens=64), _examples())
    sweeper = Sweeper(model, layout, prepared, ResultStore(tmp_path / "r.jsonl"), {"m": arch}, "val", SVDCache(disk=None))
    sweeper.sweep(cands)
    assert len(sweeper.store.rows) == 1 + len(cands)  # the base row comes with the sweep
    assert sweeper.done([])["metrics"] == prepared.score().metrics
    for c in cands:
        with edited(model, [c], svd_cache=SVDCache(disk=None)):
            plain = prepared.score().metrics
        fast = sweeper.done([c])["metrics"]
        assert fast["top1"] == plain["top1"] and fast["top10"] == plain["top10"], c
        assert fast["logloss"] == pytest.approx(plain["logloss"], abs=1e-6), c


def test_mlp_candidates_replay_the_attention_output_instead_of_computing_it(tmp_path):
    """Equality with plain forwards is the test above (every architecture, MLP candidates among them);
    this one checks the attention of the edited block really runs once per batch, not once per candidate."""
    model, tok = build_tiny("llama"), tiny_tokenizer()
    layout = get_layout(model)
    assert layout.attn == "self_attn"
    prepared = Prepared(Scorer(model, tok, max_tokens=64), _examples())
    calls = {"n": 0}
    model.model.layers[2].self_attn.q_proj.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    sweeper = Sweeper(model, layout, prepared, ResultStore(None), {"m": "llama"}, "val", SVDCache(disk=None))
    sweeper.sweep([])
    calls["n"] = 0
    mlp = grid(["mlp_in", "mlp_up", "mlp_out"], [2], [0.5, 0.2], ["svd"])
    sweeper.sweep(mlp, base=False)
    assert calls["n"] == len(prepared.batches)  # captured once per batch, replayed for all 6 candidates
    calls["n"] = 0
    sweeper.sweep(grid(["attn_o"], [2], [0.5], ["svd"]), base=False)
    assert calls["n"] == len(prepared.batches)  # an attention edit recomputes the attention
    for c in mlp:
        with edited(model, [c], svd_cache=SVDCache(disk=None)):
            plain = prepared.score().metrics
        assert sweeper.done([c])["metrics"]["logloss"] == pytest.approx(plain["logloss"], abs=1e-6)


def _row(edit, top1, loss):
    return {"edits": [edit.to_json()] if edit else [], "metrics": {"top1": top1, "logloss": loss}}


def test_best_is_primary_then_logloss():
    rows = [_row(Edit("svd", "mlp_in", 1, 0.5), 0.4, 2.0), _row(Edit("svd", "mlp_in", 2, 0.5), 0.5, 3.0),
            _row(Edit("svd", "mlp_out", 2, 0.1), 0.5, 2.5), _row(None, 0.9, 1.0)]
    assert best_row(rows, "top1")["edits"][0]["type"] == "mlp_out"


class _StubSweeper:
    """Stacks score the sum of their edits' gains: compose's choices can be checked by hand."""

    def __init__(self, gains):
        self.gains, self.calls = gains, []

    def evaluate(self, edits):
        self.calls.append([str(e) for e in edits])
        return {"metrics": {"top1": 0.5 + sum(self.gains[e.layer] for e in edits), "logloss": 1.0}}


def test_compose_orders_layers_by_gain_and_keeps_improvements():
    gains = {0: 0.02, 1: -0.05, 2: 0.10, 3: 0.0}
    rows = [_row(Edit("svd", "mlp_in", layer, 0.1), 0.5 + g, 1.0) for layer, g in gains.items()]
    rows.append(_row(Edit("svd", "mlp_out", 2, 0.1), 0.55, 1.0))  # worse than mlp_in at layer 2
    stub = _StubSweeper(gains)
    stack, row = compose(stub, rows, {"metrics": {"top1": 0.5, "logloss": 1.0}}, "top1")
    assert [str(e) for e in stack] == ["mlp_in:2:0.1", "mlp_in:0:0.1"]
    assert row["metrics"]["top1"] == pytest.approx(0.62)
    # layer 2 (best gain) is taken from its row, then 0, 3 and 1 are each tried on top of the stack
    assert stub.calls == [["mlp_in:2:0.1", "mlp_in:0:0.1"], ["mlp_in:2:0.1", "mlp_in:0:0.1", "mlp_in:3:0.1"],
                          ["mlp_in:2:0.1", "mlp_in:0:0.1", "mlp_in:1:0.1"]]


def _search_argv(folder, task, out, *extra):
    return ["search", str(folder), "-t", str(task), "--types", "mlp_in,mlp_out,attn_o", "--layers", "all",
            "--rhos", "0.9,0.6,0.3,0.1,k=2,k=1", "--no-svd-cache", "-o", str(out), *extra]


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sigkill_then_rerun_equals_an_uninterrupted_run(tiny_with_tokenizer, task_file, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert main(_search_argv(tiny_with_tokenizer, task_file, full)) == 0
    results = killed / "results.jsonl"
    kill_when(_search_argv(tiny_with_tokenizer, task_file, killed), results, 4)
    n_before = len(_rows(results))
    assert 4 <= n_before < len(_rows(full / "results.jsonl"))
    with open(results, "a") as f:
        f.write('{"key": "torn", "edits": [{"meth')  # what a kill in the middle of a write leaves
    assert main(_search_argv(tiny_with_tokenizer, task_file, killed)) == 0
    a, b = _rows(full / "results.jsonl"), _rows(killed / "results.jsonl")
    assert len({r["key"] for r in b}) == len(b) == len(a) == 1 + 3 * 3 * 6
    assert {r["key"]: r["metrics"] for r in a} == {r["key"]: r["metrics"] for r in b}
    best_a, best_b = (json.loads((d / "best.json").read_text()) for d in (full, killed))
    assert best_a == best_b


def test_run_folder_refuses_other_runs_and_extends_grids(tiny_with_tokenizer, task_file, tmp_path, capsys):
    out = tmp_path / "run"

    def argv(task=task_file, layers="1-2", rhos="0.5", *extra):
        return ["search", str(tiny_with_tokenizer), "-t", str(task), "--layers", layers, "--rhos", rhos,
                "--limit", "40", "--no-svd-cache", "--select", "paper", "-o", str(out), *extra]

    assert main(argv()) == 0
    assert len(_rows(out / "results.jsonl")) == 1 + 2 * 2
    assert main(argv(task_file, "1-2", "0.5", "--split-seed", "7")) == 2
    assert "holds a run for another split_seed (0, now 7)" in capsys.readouterr().err
    other = tmp_path / "other.jsonl"
    other.write_text(task_file.read_text().replace("the", "a"))
    assert main(argv(other)) == 2
    assert "holds a run for another task" in capsys.readouterr().err
    assert main(argv(task_file, "0-2", "0.5,0.2", "--compose")) == 0
    rows = _rows(out / "results.jsonl")
    assert len(rows) == 1 + 3 * 2 * 2 and len({r["key"] for r in rows}) == len(rows)
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["layers"] == ["0", "1", "2"] and manifest["amounts"] == ["0.2", "0.5"]
    best = json.loads((out / "best.json").read_text())
    assert set(best) == {"metric", "lower_is_better", "base", "best", "mp", "composed", "selection"} and best["metric"] == "top1"
    assert best["lower_is_better"] is False
    assert best["mp"]["edits"][0]["method"] == "mp" and best["mp"]["edits"][0]["layer"] == best["best"]["edits"][0]["layer"]
    want = max((r for r in rows if r["edits"]), key=lambda r: rank_key(r["metrics"], "top1"))  # ties: logloss
    assert best["best"]["edits"] == want["edits"] and best["best"]["val"] == want["metrics"]["top1"]
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "Top 10 candidates" in report and (out / "plot_top1.png").stat().st_size > 1000


def test_layers_split_into_contiguous_chunks_of_equal_cost():
    from laserlm.sweep.ray_backend import contiguous_chunks

    layers = list(range(22, 30))
    cost = {layer: 4 * (30 - layer) for layer in layers}  # 4 candidates, 30 - l blocks each
    assert contiguous_chunks(layers, cost, 2) == [[22, 23, 24], [25, 26, 27, 28, 29]]  # 84 and 60 blocks
    for n in (2, 3, 4):
        chunks = contiguous_chunks(layers, cost, n)
        assert [x for c in chunks for x in c] == layers and len(chunks) <= n
        assert all(sum(cost[x] for x in c) <= sum(cost.values()) / n + max(cost.values()) for c in chunks)
    assert contiguous_chunks([5], {5: 1.0}, 4) == [[5]]
    assert len(contiguous_chunks(layers, cost, 20)) == len(layers)


def test_a_search_sweeps_clustered_methods_like_any_other(tiny_with_tokenizer, task_file, tmp_path):
    out = tmp_path / "methods"
    assert main(["search", str(tiny_with_tokenizer), "-t", str(task_file), "--layers", "1-2", "--rhos", "0.5,0.25",
                 "--methods", "svd,cluster2,cluster4", "--limit", "60", "--no-svd-cache", "-o", str(out)]) == 0
    rows = _rows(out / "results.jsonl")
    methods = sorted({r["edits"][0]["method"] for r in rows if r["edits"]})
    assert methods == ["cluster2", "cluster4", "svd"] and len(rows) == 1 + 3 * 2 * 2 * 2
    model = tf.AutoModelForCausalLM.from_pretrained(tiny_with_tokenizer)
    prepared = Prepared(Scorer(model, tiny_tokenizer()), load_task(str(task_file)).select("val", 0, 60))
    for r in rows[1:4]:  # prefix-cached clustered rows equal plain full forwards
        with edited(model, [Edit.from_json(r["edits"][0])], svd_cache=SVDCache(disk=None)):
            assert prepared.score().metrics["logloss"] == pytest.approx(r["metrics"]["logloss"], abs=1e-6)
    report = (out / "report.md").read_text()
    assert "## Methods (best candidate of each, val)" in report and "| cluster4 | 8 |" in report
