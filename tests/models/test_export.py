"""Saved folders reload with plain transformers (dense) or laserlm (factorized) with the same logits."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf

from laserlm import UserError, load_model
from laserlm.core.edits import edited
from laserlm.core.layout import get_layout
from laserlm.models.export import export
from laserlm.models.factorized import LowRankLinear
from laserlm.models.loading import Loaded

from conftest import MLM, VISION, build_tiny, tiny_batch

EDITS = ["mlp:all:0.1", "attn_o:1:k=2"]


def _folder_size(path):
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _plain_loader(arch):
    return (tf.AutoModelForMaskedLM if arch in MLM else tf.AutoModelForImageClassification if arch in VISION
            else tf.AutoModelForCausalLM)


def test_dense_folder_reloads_with_plain_transformers(tmp_path, arch):
    model = build_tiny(arch)
    x = tiny_batch(arch)
    with edited(model, EDITS):
        expected = model(**x).logits
    recipe = export(Loaded(model, None, "tiny", "folder", {"model": "tiny"}), EDITS, tmp_path / "dense")
    reloaded = _plain_loader(arch).from_pretrained(tmp_path / "dense").eval()
    assert torch.equal(reloaded(**x).logits, expected)
    saved = json.loads((tmp_path / "dense" / "laser_recipe.json").read_text())
    assert saved == json.loads(json.dumps(recipe))
    assert saved["edits"][0] == {"method": "svd", "type": "mlp_in", "layer": 0, "amount": 0.1}
    assert "mlp_in:0:0.1" in (tmp_path / "dense" / "README.md").read_text()


def test_factorized_folder_is_smaller_and_matches(tmp_path, arch):
    x = tiny_batch(arch)
    dense_model, fact_model = build_tiny(arch), build_tiny(arch)
    export(Loaded(dense_model, None, "tiny", "folder"), EDITS, tmp_path / "dense")
    recipe = export(Loaded(fact_model, None, "tiny", "folder"), EDITS, tmp_path / "fact", factorized=True)
    assert recipe["factorized"], "nothing was factorized"
    assert _folder_size(tmp_path / "fact") < _folder_size(tmp_path / "dense")
    dense = load_model(str(tmp_path / "dense")).model
    fact = load_model(str(tmp_path / "fact"))
    assert fact.recipe["factorized"]
    lowrank = {n: m for n, m in fact.model.named_modules() if isinstance(m, LowRankLinear)}
    assert sorted(lowrank) == sorted(recipe["factorized"])
    # mlp:all:0.1 keeps floor(0.1 * min(m, n)) of each MLP matrix, attn_o:1:k=2 two; factors where smaller
    want = {}
    for t in get_layout(build_tiny(arch)).targets():
        if t.type.startswith("mlp_") or (t.type, t.layer) == ("attn_o", 1):
            k = 2 if t.type == "attn_o" else max(1, min(t.shape) // 10)
            if k * sum(t.shape) < t.shape[0] * t.shape[1]:
                want[t.name] = k
    assert want and {n: m.rank for n, m in lowrank.items()} == want
    diff = (fact.model(**x).logits - dense(**x).logits).abs().max().item()
    assert diff <= 1e-4


def test_factorized_skips_matrices_where_factors_are_not_smaller(tmp_path):
    model = build_tiny("llama")
    recipe = export(Loaded(model, None, "tiny", "folder"), ["mlp_in:0:1.0", "mlp_out:0:k=2"], tmp_path / "f",
                    factorized=True)
    assert list(recipe["factorized"]) == ["model.layers.0.mlp.down_proj"]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_clustered_edits_export_dense_and_as_groups_of_factors(tmp_path, arch):
    from safetensors.torch import load_file

    from laserlm.models.factorized import ClusteredLowRankLinear

    edits = ["cluster4/mlp_in:all:0.1", "mlp_out:1:0.1"]
    x = tiny_batch(arch)
    model = build_tiny(arch)
    with edited(model, edits):
        expected = model(**x).logits
    export(Loaded(build_tiny(arch), None, "tiny", "folder"), edits, tmp_path / "dense")
    assert torch.equal(_plain_loader(arch).from_pretrained(tmp_path / "dense").eval()(**x).logits, expected)
    recipe = export(Loaded(build_tiny(arch), None, "tiny", "folder"), edits, tmp_path / "fact", factorized=True)
    clustered = {n: i for n, i in recipe["factorized"].items() if "clusters" in i}
    assert len(clustered) == 3 and all(len(i["clusters"]) == 4 and sum(i["clusters"]) == i["shape"][0]
                                       for i in clustered.values())
    factors = load_file(tmp_path / "fact" / "laser_factors.safetensors")
    name = next(iter(clustered))
    assert {k for k in factors if k.startswith(name + ".")} == {f"{name}.{p}.{j}" for p in ("down", "up")
                                                               for j in range(4)} | {f"{name}.order"}
    loaded = load_model(str(tmp_path / "fact"))
    modules = [m for m in loaded.model.modules() if isinstance(m, ClusteredLowRankLinear)]
    assert len(modules) == 3
    torch.testing.assert_close(loaded.model(**x).logits, expected, atol=1e-4, rtol=1e-4)
    assert _folder_size(tmp_path / "fact") < _folder_size(tmp_path / "dense")
    with pytest.raises(UserError, match="clustered factors"):
        with edited(loaded.model, ["mlp_in:0:0.5"]):
            pass
