"""Any causal LM of transformers, found by structure: every type of its causal-LM mapping, built tiny from its own
config. Each block that has attention and an MLP gets `mlp_in` and `mlp_out` by role, experts included."""

from __future__ import annotations

import warnings

import pytest
import torch

from laserlm import get_layout
from laserlm.core.edits import edited

from tiny_any import tiny_any

# Types whose blocks hold no attention + MLP pair to name: pure state-space models, and hybrids whose MLPs sit in
# blocks shared outside the block list. Named here so that the sweep below fails on any other type that misses.
NO_MLP_BLOCKS = {"mamba", "mamba2", "falcon_mamba", "zamba", "zamba2"}
# Models whose own default config does not build at a small size in this transformers (a ValueError or an
# AttributeError from the config itself, or a dependency such as timm): reported, not counted.
NAMED = ["qwen3", "olmo2", "granite", "smollm3", "gemma3", "mixtral", "qwen3_moe", "phi", "falcon", "starcoder2",
         "cohere", "llama4_text"]


def _causal_types() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def _build(model_type: str, vocab: int = 512):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tiny_any(model_type, vocab=vocab)
    except Exception as e:  # noqa: BLE001 - the config's own failure, not ours
        pytest.skip(f"{model_type}: its default config does not build small here ({type(e).__name__})")


@pytest.mark.parametrize("model_type", NAMED)
def test_named_types_get_every_canonical_mlp_type(model_type):
    model = _build(model_type)
    layout = get_layout(model)
    assert layout.source == "structure"
    assert all("mlp_in" in t and "mlp_out" in t for t in layout.per_layer), layout.patterns
    hidden = model.config.get_text_config(decoder=True).hidden_size
    for target in layout.targets(["mlp_out"]):
        assert all(m.shape[0] == hidden for m in target.matrices())  # mlp_out produces the hidden size
    for target in layout.targets(["mlp_in"]):
        assert all(m.shape[1] == hidden for m in target.matrices())  # mlp_in reads it


def test_every_causal_lm_type_of_transformers(capsys):
    """The whole mapping (about 200 types): each one that builds and has attention + MLP blocks gets mlp_in and
    mlp_out in every such block. The count is printed (pytest -s) and bounded below."""
    covered, missing, unbuilt = [], [], []
    for model_type in _causal_types():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = tiny_any(model_type, vocab=512)
        except Exception:  # noqa: BLE001
            unbuilt.append(model_type)
            continue
        layout = get_layout(model)
        with_mlp = [t for t in layout.per_layer if "mlp_in" in t or "mlp_out" in t]
        if with_mlp and all("mlp_in" in t and "mlp_out" in t for t in with_mlp):
            covered.append(model_type)
        elif model_type not in NO_MLP_BLOCKS:
            missing.append(model_type)
        del model
    print(f"\nstructure: {len(covered)} of {len(_causal_types())} types covered; without MLP blocks: "
          f"{sorted(NO_MLP_BLOCKS)}; configs that do not build small: {unbuilt}")
    assert not missing, f"types with attention + MLP blocks but no mlp_in/mlp_out: {missing}"
    assert len(covered) >= 0.75 * len(_causal_types())  # 172 of 200 in transformers 5.25


@pytest.mark.parametrize("model_type", ["mixtral", "qwen3_moe", "qwen2_moe", "gpt_oss", "llama4_text", "jetmoe"])
def test_a_moe_edit_reduces_every_expert_and_leaves_the_router(model_type):
    model = _build(model_type)
    layout = get_layout(model)
    target = layout.target("mlp_in", 1)
    assert target.is_mixture and len(target.matrices()) >= 4
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with edited(model, ["mlp_in:1:k=2", "mlp_out:1:k=3"], layout=layout) as steps:
        for m in layout.target("mlp_in", 1).matrices():
            assert torch.linalg.matrix_rank(m.weight.detach()).item() == 2
        for m in layout.target("mlp_out", 1).matrices():
            assert torch.linalg.matrix_rank(m.weight.detach()).item() == 3
        changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        assert changed and all(".1." in n and ("expert" in n or "input_linear" in n or "output_linear" in n)
                               for n in changed), changed
        assert not any("router" in n or n.endswith("mlp.gate.weight") for n in changed)
        assert len(steps) == len(target.matrices()) + len(layout.target("mlp_out", 1).matrices())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # restored bit for bit


def test_one_expert_by_name_and_the_shared_expert():
    model = _build("qwen2_moe")
    layout = get_layout(model)
    experts = model.model.layers[1].mlp.experts.gate_up_proj
    before = experts.detach().clone()
    shared = model.model.layers[1].mlp.shared_expert.gate_proj.weight
    with edited(model, ["mlp_in@2:1:k=1"], layout=layout):
        assert torch.equal(experts[[0, 1, 3]], before[[0, 1, 3]])
        assert torch.linalg.matrix_rank(experts[2].detach()).item() == 1
        assert not torch.equal(experts[2], before[2])
    with edited(model, ["mlp_in@shared:1:k=1"], layout=layout):
        assert torch.equal(experts, before)
        assert torch.linalg.matrix_rank(shared.detach()).item() == 1
    from laserlm import UserError

    with pytest.raises(UserError, match="has no expert '9'"):
        layout.target("mlp_in@9", 1)


@pytest.mark.parametrize("model_type", ["mixtral", "gpt_oss"])
def test_expert_orientation_follows_the_parameter(model_type):
    """Mixtral stores experts (E, out, in) for F.linear, gpt-oss (E, in, out) for a matmul: the role decides."""
    model = _build(model_type)
    hidden = model.config.hidden_size
    t = get_layout(model).target("mlp_out", 0).matrices()[0]
    assert t.shape[0] == hidden and t.transposed == (model_type == "gpt_oss")
