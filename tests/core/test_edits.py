"""Edits on every architecture: exact ranks, untouched neighbours, bit-exact revert."""

from __future__ import annotations

import math

import pytest
import torch

from laserlm import Edit, UserError, apply_edits, edited, get_layout, parse_edit, plan, rank_for
from laserlm.core.layout import Conv1D
from laserlm.core.methods import mp_threshold

from conftest import build_tiny, tiny_inputs

EXPECTED_TYPES = {
    "llama": {"mlp_in", "mlp_up", "mlp_out", "attn_q", "attn_k", "attn_v", "attn_o"},
    "phi3": {"mlp_in", "mlp_out", "attn_qkv", "attn_o"},
    "gpt2": {"mlp_in", "mlp_out", "attn_qkv", "attn_o"},
    "gpt_neox": {"mlp_in", "mlp_out", "attn_qkv", "attn_o"},
    "opt": {"mlp_in", "mlp_out", "attn_q", "attn_k", "attn_v", "attn_o"},
    "bert": {"mlp_in", "mlp_out", "attn_q", "attn_k", "attn_v", "attn_o"},
    "vit": {"mlp_in", "mlp_out", "attn_q", "attn_k", "attn_v", "attn_o"},
}


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_table_covers_the_architecture(tiny, arch):
    layout = get_layout(tiny)
    assert layout.source == "table"
    assert layout.n_layers == 3
    if arch in EXPECTED_TYPES:
        assert set(layout.types) == EXPECTED_TYPES[arch]
    assert {"mlp_in", "mlp_out", "attn_o"} <= set(layout.types)


def test_every_type_gets_exact_rank_and_nothing_else_moves(tiny, arch):
    layout = get_layout(tiny)
    before = snapshot(tiny)
    for type_ in layout.types:
        target = layout.target(type_, 1)
        k = rank_for(0.25, target.shape)
        assert k == max(1, math.floor(0.25 * min(target.shape)))
        with edited(tiny, [f"{type_}:1:0.25"]):
            after = snapshot(tiny)
            w = target.weight.detach()
            assert torch.linalg.matrix_rank(w).item() == k
            changed = {n for n in before if not torch.equal(before[n], after[n])}
            assert changed == {f"{target.name}.weight"}, changed
        restored = snapshot(tiny)
        assert all(torch.equal(before[n], restored[n]) for n in before)


def test_decision_transformer_is_in_the_table():
    import transformers as tf

    torch.manual_seed(0)
    model = tf.DecisionTransformerModel(tf.DecisionTransformerConfig(state_dim=5, act_dim=3, hidden_size=32, n_layer=3,
                                                                     n_head=4, bos_token_id=None, eos_token_id=None))
    layout = get_layout(model)
    assert layout.source == "table" and layout.n_layers == 3
    assert set(layout.types) == {"mlp_in", "mlp_out", "attn_qkv", "attn_o"}
    assert layout.target("mlp_in", 2).name == "encoder.h.2.mlp.c_fc" and layout.target("mlp_in", 2).shape == (128, 32)
    with edited(model, ["mlp_out:1:k=3"]):
        assert torch.linalg.matrix_rank(model.encoder.h[1].mlp.c_proj.weight.detach()).item() == 3


def test_vit_with_the_older_module_names_uses_the_second_alternative():
    """transformers 4.x named ViT's blocks vit.encoder.layer.N.{intermediate,output}.dense (BERT's names)."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.intermediate, self.output = nn.Module(), nn.Module()
            self.intermediate.dense, self.output.dense = nn.Linear(4, 8), nn.Linear(8, 4)

    class OldViT(nn.Module):
        config = type("Config", (), {"model_type": "vit"})()

        def __init__(self):
            super().__init__()
            self.vit = nn.Module()
            self.vit.encoder = nn.Module()
            self.vit.encoder.layer = nn.ModuleList(Block() for _ in range(2))

        @property
        def base_model(self):
            return self.vit

    layout = get_layout(OldViT())
    assert layout.source == "table" and set(layout.types) == {"mlp_in", "mlp_out"}
    assert layout.target("mlp_out", 1).name == "vit.encoder.layer.1.output.dense"


def test_gpt2_conv1d_shape_is_out_by_in():
    model = build_tiny("gpt2")
    target = get_layout(model).target("mlp_in", 0)
    assert isinstance(target.module, Conv1D)
    assert target.module.weight.shape == (32, 128)  # stored in x out
    assert target.shape == (128, 32)
    qkv = get_layout(model).target("attn_qkv", 0)
    assert qkv.shape == (96, 32)


def test_svd_edit_equals_truncated_svd():
    model = build_tiny("llama")
    target = get_layout(model).target("mlp_out", 2)
    w = target.weight.detach().clone()
    U, S, Vh = torch.linalg.svd(w, full_matrices=False)
    with edited(model, ["mlp_out:2:k=5"]):
        expected = U[:, :5] @ torch.diag(S[:5]) @ Vh[:5]
        torch.testing.assert_close(target.weight.detach(), expected, atol=1e-6, rtol=1e-5)
        kept = torch.linalg.svdvals(target.weight.detach())[:5]
        torch.testing.assert_close(kept, S[:5], atol=1e-6, rtol=1e-5)


def test_bottom_keeps_the_smallest_components():
    model = build_tiny("llama")
    target = get_layout(model).target("mlp_in", 0)  # 64 x 32
    S = torch.linalg.svdvals(target.weight.detach())
    with edited(model, ["bottom/mlp_in:0:k=4"]):
        w = target.weight.detach()
        assert torch.linalg.matrix_rank(w).item() == 4
        torch.testing.assert_close(torch.linalg.svdvals(w)[:4], S[-4:], atol=1e-6, rtol=1e-4)


def test_prune_keeps_the_largest_entries():
    model = build_tiny("opt")
    target = get_layout(model).target("mlp_in", 1)  # 64 x 32 = 2048 entries
    w0 = target.weight.detach().clone()
    with edited(model, ["prune/mlp_in:1:0.1"]):
        w = target.weight.detach()
        assert int((w != 0).sum()) == 204  # floor(0.1 * 2048)
        threshold = w0.abs().flatten().sort(descending=True).values[203]
        assert torch.equal(w[w != 0], w0[w != 0])
        assert (w0.abs()[w != 0] >= threshold).all()


def test_zero_and_mp():
    model = build_tiny("gptj")
    layout = get_layout(model)
    with edited(model, ["zero/mlp_out:0"]):
        assert not layout.target("mlp_out", 0).weight.any()
    target = layout.target("mlp_in", 2)
    w = target.weight.detach().double()
    m, n = w.shape
    assert (m, n) == (128, 32)
    # Gavish-Donoho: sigma = median singular value / sqrt(max(m, n) * mu_beta), mu_beta the median of the
    # Marchenko-Pastur law for beta = 32/128, here by a plain Riemann sum of its density
    beta = 0.25
    a, b = (1 - beta ** 0.5) ** 2, (1 + beta ** 0.5) ** 2
    t = a + (b - a) * torch.linspace(0, 1, 400001, dtype=torch.float64)
    dens = torch.sqrt((b - t) * (t - a)) / (2 * math.pi * beta * t)
    cdf = torch.cumsum(dens, 0) / dens.sum()
    mu = t[int(torch.searchsorted(cdf, torch.tensor(0.5, dtype=torch.float64)))].item()
    s = torch.linalg.svdvals(w)
    sigma = s.median().item() / math.sqrt(max(m, n) * mu)
    assert mp_threshold(w) == pytest.approx(sigma * (math.sqrt(m) + math.sqrt(n)), rel=1e-4)
    expected_k = max(1, int((torch.linalg.svdvals(w) > sigma * (math.sqrt(m) + math.sqrt(n))).sum()))
    with edited(model, ["mp/mlp_in:2"]) as steps:
        assert torch.linalg.matrix_rank(target.weight.detach()).item() == expected_k
        assert steps[0].k is None


def test_mp_on_a_hand_made_matrix():
    # Rank-1 signal far above noise: the edge must keep exactly one component.
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(200, 100, generator=g, dtype=torch.float64) * 0.01
    signal = 5 * torch.outer(torch.ones(200, dtype=torch.float64), torch.ones(100, dtype=torch.float64)) / 141.42
    w = signal + noise
    edge = mp_threshold(w)
    S = torch.linalg.svdvals(w)
    assert S[0] > edge > S[1]


@pytest.mark.parametrize("rho,dim,k", [(0.29, 100, 29), (0.01, 576, 5), (0.1, 576, 57), (1.0, 32, 32), (0.001, 32, 1)])
def test_rank_rule(rho, dim, k):
    assert rank_for(rho, (dim * 2, dim)) == k
    assert rank_for("k=7", (dim * 2, dim)) == 7


def test_revert_is_bit_exact_on_error_and_for_stacks():
    model = build_tiny("gpt2")
    before = snapshot(model)
    x = tiny_inputs()
    base = model(x).logits
    with pytest.raises(RuntimeError):
        with edited(model, ["mlp:all:0.1", "attn_o:0-1:k=2", "prune/attn_qkv:2:0.5"]):
            assert not torch.equal(model(x).logits, base)
            raise RuntimeError("boom")
    assert all(torch.equal(before[k], v) for k, v in snapshot(model).items())
    with edited(model, ["mlp_in:0:0.5"]):
        with edited(model, ["mlp_out:0:0.5"]):
            pass
        assert not torch.equal(before["transformer.h.0.mlp.c_fc.weight"], model.transformer.h[0].mlp.c_fc.weight)
        assert torch.equal(before["transformer.h.0.mlp.c_proj.weight"], model.transformer.h[0].mlp.c_proj.weight)
    assert torch.equal(model(x).logits, base)


def test_group_and_range_expansion():
    model = build_tiny("llama")
    steps = plan(model, ["mlp:1-2:0.5", "attn_q:0:0.5"])
    assert [str(s.edit) for s in steps] == [
        "mlp_in:1:0.5", "mlp_up:1:0.5", "mlp_out:1:0.5",
        "mlp_in:2:0.5", "mlp_up:2:0.5", "mlp_out:2:0.5", "attn_q:0:0.5",
    ]
    steps = plan(model, ["zero/all:all"])
    assert len(steps) == 7 * 3


def test_edit_json_round_trip():
    e = Edit("prune", "mlp_in", 3, 0.1)
    assert Edit.from_json(e.to_json()) == e
    assert str(e) == "prune/mlp_in:3:0.1"
    assert str(Edit("svd", "mlp_out", 2, "k=8")) == "mlp_out:2:k=8"
    assert str(Edit("zero", "mlp_out", 5)) == "zero/mlp_out:5"
    spec = parse_edit("mlp_out:20-22,25:k=8")
    assert spec.layers == (20, 21, 22, 25) and spec.amount == "k=8"


@pytest.mark.parametrize("text,fragment", [
    ("mlp_in:27", "needs an amount"),
    ("mlp_in:2:1.5", "outside (0, 1]"),
    ("mlp_in:2:0", "outside (0, 1]"),
    ("mlp_in:x:0.5", "malformed edit"),
    ("mlp_in:5-2:0.5", "low-high"),
    ("foo/mlp_in:2:0.5", "unknown edit method"),
    ("prune/mlp_in:2:k=4", "takes a fraction"),
    ("mlp_in:2:k=0", "at least 1"),
    ("mlp_in:2:abc", "bad amount"),
    ("nonsense", "malformed edit"),
])
def test_parse_errors(text, fragment):
    with pytest.raises(UserError, match=None) as err:
        parse_edit(text)
    assert fragment in str(err.value)


@pytest.mark.parametrize("edits,fragment", [
    (["attn_q:0:0.5"], "unknown matrix type 'attn_q' for gpt2"),
    (["mlp_in:3:0.5"], "layer 3 is out of range: gpt2 has layers 0-2"),
    (["mlp_in:1:0.5", "mlp:1:k=2"], "both change transformer.h.1.mlp.c_fc"),
    (["mlp_in:1:k=33"], "exceeds the maximum rank 32"),
])
def test_plan_errors(edits, fragment):
    model = build_tiny("gpt2")
    with pytest.raises(UserError) as err:
        plan(model, edits)
    assert fragment in str(err.value)


def test_apply_is_permanent():
    model = build_tiny("qwen2")
    steps = apply_edits(model, ["mlp_out:0:k=3"])
    assert torch.linalg.matrix_rank(steps[0].target.weight.detach()).item() == 3


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = torch.nn.ModuleDict({"qkv": torch.nn.Linear(16, 48)})
        self.mlp = torch.nn.ModuleDict({"fc1": torch.nn.Linear(16, 64), "fc2": torch.nn.Linear(64, 16)})


class _TinyViT(torch.nn.Module):
    """Not a Hugging Face model: a stand-in for a vision or decision transformer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.patch = torch.nn.Linear(12, 16)
        self.blocks = torch.nn.ModuleList(_Block() for _ in range(4))


def test_structure_names_a_custom_model_by_role():
    """No config, no table: the blocks, the attention and the MLP are found by structure, matrices named by role."""
    model = _TinyViT()
    layout = get_layout(model)
    assert layout.source == "structure" and layout.n_layers == 4 and layout.blocks == "blocks"
    assert layout.patterns == {"mlp_in": "blocks.{layer}.mlp.fc1", "mlp_out": "blocks.{layer}.mlp.fc2",
                               "attn_qkv": "blocks.{layer}.attn.qkv"}
    with edited(model, ["mlp_in:3:k=2"]):
        assert torch.linalg.matrix_rank(model.blocks[3].mlp.fc1.weight.detach()).item() == 2


class _Odd(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(16, 16), torch.nn.Linear(16, 16)


def test_discovery_fallback_says_so(capsys):
    """Blocks with no attention or MLP that structure can name: every matrix keeps its path, and it is said."""
    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList(_Odd() for _ in range(3))
    layout = get_layout(model)
    assert layout.source == "discovered" and layout.n_layers == 3
    assert set(layout.types) == {"a", "b"}
    assert "no architecture entry" in capsys.readouterr().err
    with edited(model, ["a:2:k=2"]):
        assert torch.linalg.matrix_rank(model.blocks[2].a.weight.detach()).item() == 2


def test_module_patterns_on_any_module():
    model = _TinyViT()
    layout = get_layout(model, ["blocks.{layer}.mlp.fc1", "out=blocks.{layer}.mlp.fc2"])
    assert layout.source == "pattern" and layout.types == ["fc1", "out"] and layout.n_layers == 4
    with edited(model, ["fc1:0-1:0.25", "out:2:k=1"], layout=layout) as steps:
        assert [s.k for s in steps] == [4, 4, 1]
        assert torch.linalg.matrix_rank(model.blocks[2].mlp.fc2.weight.detach()).item() == 1
    with pytest.raises(UserError, match="matches no Linear"):
        get_layout(model, ["blocks.{layer}.mlp"])
    with pytest.raises(UserError, match="placeholder"):
        get_layout(model, ["blocks.0.mlp.fc1"])


def _plant(target, ranks: list[float], noise: float, seed: int = 0) -> torch.Tensor:
    """Write a rank-len(ranks) signal with these singular values, plus i.i.d. noise, into the target's weight."""
    g = torch.Generator().manual_seed(seed)
    m, n = target.weight.shape
    u, _ = torch.linalg.qr(torch.randn(m, len(ranks), generator=g))
    v, _ = torch.linalg.qr(torch.randn(n, len(ranks), generator=g))
    w = u @ torch.diag(torch.tensor(ranks)) @ v.T + noise * torch.randn(m, n, generator=g)
    with torch.no_grad():
        target.weight.copy_(w)
    return w


def test_mp_keeps_a_planted_rank_and_equals_its_truncation():
    model = build_tiny("gptj")
    layout = get_layout(model)
    target = layout.target("mlp_in", 1)
    w = _plant(target, [60.0, 40.0, 30.0], noise=0.05)
    S = torch.linalg.svdvals(w.double())
    assert S[2] > mp_threshold(w) > S[3]  # three components above the edge, the noise below
    U, S32, Vh = torch.linalg.svd(w, full_matrices=False)
    with edited(model, ["mp/mlp_in:1"]) as steps:
        got = target.weight.detach()
        assert torch.linalg.matrix_rank(got).item() == 3
        torch.testing.assert_close(got, U[:, :3] @ torch.diag(S32[:3]) @ Vh[:3], atol=1e-5, rtol=1e-5)
        assert steps[0].k is None
