"""bfloat16 on the CPU: the prefix-cached sweep equals plain full forwards of the same bfloat16 model, and a
search run under --dtype bfloat16 completes, records its dtype and restores every weight bit-exact."""

from __future__ import annotations

import json

import pytest
import torch

from laserlm import edited, get_layout
from laserlm.cli.main import main
from laserlm.core.svd import SVDCache
from laserlm.evaluation.evaluate import Prepared
from laserlm.evaluation.scoring import Scorer
from laserlm.evaluation.tasks import Example
from laserlm.sweep.store import ResultStore
from laserlm.sweep.sweeper import Sweeper, grid

from conftest import build_tiny, cloze_rows, tiny_tokenizer


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_bfloat16_sweep_equals_plain_forwards(arch, tmp_path):
    model = build_tiny(arch).to(torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = [Example(r["prompt"], answers=[r["answer"]]) for r in cloze_rows(24)]
    prepared = Prepared(Scorer(model, tiny_tokenizer(), max_tokens=64), rows)
    layout, cache = get_layout(model), SVDCache(disk=None)
    sweeper = Sweeper(model, layout, prepared, ResultStore(None), {"m": arch}, "val", cache)
    cands = grid(["mlp_in", "mlp_out"], [1, 2], [0.5, "k=1"], ["svd"])
    sweeper.sweep(cands)
    for c in cands:
        with edited(model, [c], layout=layout, svd_cache=cache):
            assert model.get_submodule(layout.target(c.type, c.layer).name).weight.dtype == torch.bfloat16
            plain = prepared.score().metrics
        fast = sweeper.done([c])["metrics"]
        assert fast["top1"] == plain["top1"] and fast["logloss"] == pytest.approx(plain["logloss"], abs=1e-6)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_search_under_bfloat16(tiny_with_tokenizer, tmp_path):
    task = tmp_path / "rows.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in cloze_rows(60)))
    out = tmp_path / "run"
    assert main(["search", str(tiny_with_tokenizer), "-t", str(task), "--dtype", "bfloat16", "--layers", "1-2",
                 "--rhos", "0.5", "--compose", "--no-svd-cache", "--device", "cpu", "-o", str(out)]) == 0
    assert json.loads((out / "run.json").read_text())["dtype"] == "bfloat16"
    best = json.loads((out / "best.json").read_text())
    assert "composed" in best
    # The run's numbers are the bf16 model's: its base equals an evaluation of the model loaded in bf16, and differs
    # from float32's (the manifest's dtype alone was once copied from the argument).
    from laserlm import load_model
    from laserlm.evaluation.evaluate import evaluate
    from laserlm.evaluation.tasks import load_task

    rows = load_task(str(task)).select("val", 0, None)
    got = {}
    for dtype in ("bfloat16", "float32"):
        loaded = load_model(str(tiny_with_tokenizer), dtype=dtype, device="cpu")
        got[dtype] = evaluate(Scorer(loaded.model, loaded.tokenizer), rows).metrics["logloss"]
    assert best["base"]["val_metrics"]["logloss"] == pytest.approx(got["bfloat16"], abs=1e-6)
    assert abs(got["bfloat16"] - got["float32"]) > 1e-4
