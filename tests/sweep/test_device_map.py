"""A model spread by accelerate (one block offloaded to disk) is searched, evaluated on test, composed, and
comes back bit-exact: the prefix replay puts accelerate's hooks back instead of deleting them."""

from __future__ import annotations

import pytest
import torch

from laserlm import Edit, UserError, edited, get_layout
from laserlm.core.svd import SVDCache
from laserlm.evaluation.evaluate import Prepared
from laserlm.evaluation.scoring import Scorer
from laserlm.evaluation.tasks import Example
from laserlm.sweep.store import ResultStore
from laserlm.sweep.sweeper import Sweeper, best_row, compose, grid

from conftest import build_tiny, cloze_rows, optional, tiny_tokenizer

accelerate = optional("accelerate")


def _dispatched(tmp_path):
    model = build_tiny("llama")
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "disk", "model.layers.1": "cpu",
                  "model.layers.2": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    model = accelerate.dispatch_model(model, device_map=device_map, offload_dir=str(tmp_path / "offload"))
    return model, reference


def _rows(n, seed):
    return [Example(r["prompt"], answers=[r["answer"]]) for r in cloze_rows(n, seed)]


def test_search_test_and_compose_under_a_device_map(tmp_path):
    model, reference = _dispatched(tmp_path)
    block0 = model.model.layers[0]
    hook_forward = block0.__dict__["forward"]  # accelerate's hook is the instance's forward
    assert model.model.layers[0].mlp.gate_proj.weight.device.type == "meta"
    layout, tok, cache = get_layout(model), tiny_tokenizer(), SVDCache(disk=None)
    val = Prepared(Scorer(model, tok, max_tokens=64), _rows(30, 1))
    test = Prepared(Scorer(model, tok, max_tokens=64), _rows(30, 2))
    sweeper = Sweeper(model, layout, val, ResultStore(tmp_path / "r.jsonl"), {"m": "map"}, "val", cache)
    cands = grid(["mlp_in", "mlp_out"], [1, 2], [0.5, 0.1], ["svd"])
    sweeper.sweep(cands)
    assert block0.__dict__["forward"] is hook_forward  # put back, not deleted
    for c in cands:  # every prefix-cached row equals a plain full forward of the dispatched model
        with edited(model, [c], layout=layout, svd_cache=cache):
            plain = val.score().metrics
        assert sweeper.done([c])["metrics"]["logloss"] == pytest.approx(plain["logloss"], abs=1e-6)
    rows = [r for r in sweeper.store.rows.values() if r["edits"]]
    best = best_row(rows, "top1")
    base_test = test.score().metrics  # full forwards through every hook, offloaded block 0 included
    on_test = Sweeper(model, layout, test, ResultStore(None), {"m": "map"}, "test", cache)
    assert on_test.evaluate([])["metrics"] == base_test
    with edited(model, [Edit.from_json(best["edits"][0])], layout=layout, svd_cache=cache):
        want = test.score().metrics
    assert on_test.evaluate([Edit.from_json(best["edits"][0])])["metrics"] == want
    stack, _ = compose(Sweeper(model, layout, val, ResultStore(None), {"m": "map"}, "val", cache), rows,
                       sweeper.done([]), "top1")
    assert all(e.layer in (1, 2) for e in stack)
    state = model.state_dict()
    for k, v in reference.items():
        if state[k].device.type != "meta":
            assert torch.equal(state[k], v), k
    assert test.score().metrics == base_test


def test_editing_an_offloaded_matrix_is_a_clear_error(tmp_path):
    model, _ = _dispatched(tmp_path)
    with pytest.raises(UserError, match="offloads"):
        with edited(model, ["mlp_in:0:0.5"]):
            pass
