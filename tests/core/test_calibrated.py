"""whiten/ and asvd/: the linear algebra against hand computations, the non-PD fallback, and calibration on a model
(the statistics against inputs captured by hand, the cache, bit-exact restore, Conv1D orientation)."""

import math
import random

import pytest
import torch

from conftest import WORDS, build_tiny, tiny_tokenizer
from laserlm.core.calibrated import InputStats, asvd, whiten, whitening
from laserlm.core.edits import edited
from laserlm.core.layout import get_layout
from laserlm.core.methods import mp_median, mp_threshold, noise_sigma
from laserlm.core.svd import SVDCache
from laserlm.errors import UserError
import laserlm.evaluation.calibration as calibration


def _stats(X: torch.Tensor) -> InputStats:
    X = X.double()
    return InputStats(X.abs().mean(0), X.shape[0], "test", gram_tensor=X.T @ X / X.shape[0])


def _err(W, W2, X):
    return torch.linalg.norm((W.double() - W2.double()) @ X.double().T).item()


def _inputs(n_tok=400, n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(n, n, generator=g, dtype=torch.float64) * torch.logspace(0, -2, n, dtype=torch.float64)
    return torch.randn(n_tok, n, generator=g, dtype=torch.float64) @ mix  # strongly correlated channels


def test_whitened_truncation_is_the_optimum_of_the_data_error_and_beats_plain_svd():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(10, 12, generator=g, dtype=torch.float64)
    X = _inputs()
    k = 3
    got = whiten(W.float(), k, _stats(X), SVDCache(disk=None)).matrix()
    assert torch.linalg.matrix_rank(got).item() == k
    # By hand: min over rank-k W' of ||(W - W') X^T|| = the tail of the singular values of W L, L L^T = X^T X.
    L = torch.linalg.cholesky(X.T @ X)
    tail = torch.linalg.svdvals(W @ L)[k:]
    assert _err(W, got, X) == pytest.approx(tail.square().sum().sqrt().item(), rel=1e-4)
    U, S, Vh = torch.linalg.svd(W)
    plain = U[:, :k] @ torch.diag(S[:k]) @ Vh[:k]
    assert _err(W, got, X) < 0.8 * _err(W, plain, X)
    # no nearby rank-k matrix does better
    for seed in range(5):
        e = torch.randn(10, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 1e-2
        Uk, Sk, Vk = torch.linalg.svd(got.double(), full_matrices=False)
        nearby = (Uk[:, :k] + e) @ torch.diag(Sk[:k]) @ Vk[:k]
        assert _err(W, nearby, X) >= _err(W, got, X) - 1e-6


def test_not_positive_definite_falls_back_to_a_floored_eigendecomposition():
    X = _inputs(n_tok=6)  # fewer tokens than channels: X^T X has rank 6 of 12
    X[:, 4] = 0  # and a dead channel
    gram = X.T @ X / X.shape[0]
    wh = whitening(gram)
    assert wh.fallback
    vals = torch.linalg.eigvalsh(gram)
    floored = wh.S @ wh.S.mT
    # S S^T is the Gram matrix with each eigenvalue raised to at least 1e-6 of the largest
    assert torch.linalg.eigvalsh(floored).min().item() == pytest.approx(1e-6 * vals.max().item(), rel=1e-3)
    torch.testing.assert_close(floored, gram, atol=2e-6 * vals.max().item(), rtol=0)
    B = torch.randn(3, 12, dtype=torch.float64)
    torch.testing.assert_close(wh.unwhiten(B) @ wh.S, B)  # B S^-1 S = B
    W = torch.randn(10, 12, dtype=torch.float64)
    got = whiten(W.float(), 3, _stats(X), SVDCache(disk=None)).matrix()
    assert torch.isfinite(got).all()
    U, S, Vh = torch.linalg.svd(W)
    assert _err(W, got, X) <= _err(W, U[:, :3] @ torch.diag(S[:3]) @ Vh[:3], X) + 1e-4
    assert not whitening(_inputs().T @ _inputs() / 400).fallback  # a full-rank Gram takes Cholesky


def test_asvd_scales_by_the_mean_absolute_input_and_undoes_it():
    X = _inputs()
    W = torch.randn(10, 12, dtype=torch.float64)
    s = X.abs().mean(0) ** 0.5
    U, S, Vh = torch.linalg.svd(W * s[None, :], full_matrices=False)
    expect = (U[:, :4] @ torch.diag(S[:4]) @ Vh[:4]) / s[None, :]
    got = asvd(W.float(), 4, _stats(X), SVDCache(disk=None)).matrix()
    torch.testing.assert_close(got.double(), expect, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name,alpha", [("asvd", 0.5), ("asvd1", 1.0), ("asvd0.25", 0.25)])
def test_asvd_exponent_in_the_method_name(name, alpha):
    from laserlm.core.edits import parse_edit
    from laserlm.core.methods import get_method

    X = _inputs()
    W = torch.randn(10, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    s = X.abs().mean(0) ** alpha
    U, S, Vh = torch.linalg.svd(W * s[None, :], full_matrices=False)
    assert S[2] > 1.05 * S[3]  # a clear gap: the float32 and float64 truncations keep the same subspace
    expect = (U[:, :3] @ torch.diag(S[:3]) @ Vh[:3]) / s[None, :]
    method = get_method(parse_edit(f"{name}/mlp_out:0:0.5").method)
    assert method.needs_stats
    got = method.fn(W.float(), 3, _stats(X), SVDCache(disk=None)).matrix()
    torch.testing.assert_close(got.double(), expect, atol=1e-5, rtol=1e-4)


def test_an_asvd_exponent_out_of_range_is_refused():
    from laserlm.core.methods import get_method

    with pytest.raises(UserError, match="outside"):
        get_method("asvd5")
    with pytest.raises(UserError, match="asvdA"):
        get_method("asvdx")


def test_robust_noise_level_and_the_marchenko_pastur_median():
    assert mp_median(1.0) == pytest.approx(0.6528, abs=5e-4)  # Gavish & Donoho (2014), Table: mu_1 = 0.6528
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(300, 600, generator=g, dtype=torch.float64) * 0.05
    assert noise_sigma(noise) == pytest.approx(0.05, rel=0.02)
    u, v = torch.randn(300, 5, generator=g, dtype=torch.float64), torch.randn(5, 600, generator=g, dtype=torch.float64)
    w = noise + u @ v * 0.2  # a strong rank-5 signal inflates the entries' std, not the median singular value
    assert w.std().item() > 0.15
    assert noise_sigma(w) == pytest.approx(0.05, rel=0.08)
    s = torch.linalg.svdvals(w)
    assert s[4] > mp_threshold(w) > s[5]


def _text(n_words=3000, seed=0):
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def _captured_inputs(model, module, ids):
    seen = []
    h = module.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        for i in range(0, len(ids), calibration.BATCH):
            model(input_ids=torch.tensor(ids[i:i + calibration.BATCH]), use_cache=False)
    h.remove()
    return torch.cat(seen).double()


def test_calibration_gathers_each_inputs_gram_shares_it_and_is_cached(tmp_path, monkeypatch):
    model, tok = build_tiny("llama"), tiny_tokenizer()
    text = tmp_path / "calib.txt"
    text.write_text(_text())
    layout = get_layout(model)
    edits = ["whiten/mlp_out:1:0.5", "whiten/attn_q:0:0.5", "asvd/attn_k:0:0.5"]
    stats = calibration.calibrate(model, tok, edits, source=str(text), quiet=True)
    calib = calibration.calibration_set(tok, str(text), seq_len=calibration.seq_len_for(model))
    down = layout.target("mlp_out", 1)
    X = _captured_inputs(model, down.module, calib.chunks)
    assert stats[down.name].count == X.shape[0] == calib.tokens
    torch.testing.assert_close(stats[down.name].gram, X.T @ X / X.shape[0], rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(stats[down.name].abs_mean, X.abs().mean(0), rtol=1e-5, atol=1e-8)
    q, k = layout.target("attn_q", 0).name, layout.target("attn_k", 0).name
    torch.testing.assert_close(stats[q].gram, stats[k].gram, rtol=0, atol=0)  # one input, one accumulator
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with edited(model, edits, svd_cache=SVDCache(disk=None)) as steps:
        assert torch.linalg.matrix_rank(down.weight.detach()).item() == steps[0].k == 16
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    # a second calibration of the same model and text reads the cache: no pass at all
    monkeypatch.setattr(calibration, "_gather", lambda *a, **k: pytest.fail("gathered again"))
    again = calibration.calibrate(build_tiny("llama"), tok, edits, source=str(text), quiet=True)
    torch.testing.assert_close(again[down.name].gram, stats[down.name].gram, rtol=0, atol=0)
    # another text is another key
    other = tmp_path / "other.txt"
    other.write_text(_text(seed=1))
    monkeypatch.undo()
    assert calibration._key(None, model, calibration.calibration_set(tok, str(other))) != stats[down.name].key


def test_whiten_on_a_conv1d_model_reduces_the_data_error_in_its_orientation(tmp_path):
    model, tok = build_tiny("gpt2"), tiny_tokenizer()
    text = tmp_path / "calib.txt"
    text.write_text(_text())
    stats = calibration.calibrate(model, tok, ["whiten/mlp_in:1:0.25"], source=str(text), quiet=True, disk=False)
    target = get_layout(model).target("mlp_in", 1)
    W = target.weight.detach().T.double()  # out x in
    X = _captured_inputs(model, target.module, calibration.calibration_set(tok, str(text), seq_len=calibration.seq_len_for(model)).chunks)
    assert stats[target.name].count == X.shape[0]
    with edited(model, ["whiten/mlp_in:1:0.25"], svd_cache=SVDCache(disk=None)) as steps:
        whitened = target.weight.detach().T.double()
    with edited(model, ["mlp_in:1:0.25"], svd_cache=SVDCache(disk=None)):
        plain = target.weight.detach().T.double()
    assert torch.linalg.matrix_rank(whitened.float()).item() == steps[0].k
    assert _err(W, whitened, X) < _err(W, plain, X)


def test_a_data_aware_edit_without_statistics_is_refused_with_the_fix():
    with pytest.raises(UserError, match="laserlm.calibrate"):
        with edited(build_tiny("llama"), ["whiten/mlp_out:1:0.5"]):
            pass


def test_laser_eval_calibrates_on_a_file_and_says_so(tiny_with_tokenizer, tmp_path, capsys):
    from laserlm.cli.main import main

    text = tmp_path / "t.txt"
    text.write_text(_text(600))
    assert main(["eval", str(tiny_with_tokenizer), "--device", "cpu", "--text", str(text), "--window", "32", "--stride", "16", "-e",
                 "whiten/mlp:all:0.5", "--calibration", str(text)]) == 0
    err = capsys.readouterr().err
    assert "calibration on" in err and "inputs of 9 matrices" in err
    assert main(["eval", str(tiny_with_tokenizer), "--device", "cpu", "--text", str(text), "--window", "32", "--stride", "16", "-e",
                 "whiten/mlp:all:0.5", "--calibration", str(tmp_path / "missing.txt")]) == 2
    assert "no such file or task" in capsys.readouterr().err


def test_calibrating_on_the_scored_task_leaves_its_scored_val_rows_out():
    import argparse

    from laserlm.cli.jobs import calibration_skip
    from laserlm.evaluation.calibration import calibration_identity, source_text
    from laserlm.evaluation.tasks import load_task

    run = dict(calibration="bb_epistemic", task="bb_epistemic", split="all")
    assert calibration_skip(argparse.Namespace(**run, limit=50)) == 50
    assert calibration_skip(argparse.Namespace(**{**run, "task": "bb_wikidata"}, limit=None)) == 0
    assert calibration_skip(argparse.Namespace(**{**run, "split": "test"}, limit=None)) == 0  # val is not scored
    with pytest.raises(UserError, match="--limit N"):
        calibration_skip(argparse.Namespace(**run, limit=None))
    val = load_task("bb_epistemic", None, "paper", None, None).select("val", 0, None)
    name, text = source_text("bb_epistemic", 50)
    assert name == f"bb_epistemic (val rows 51-{len(val)}, past those the run scores)"
    assert text.startswith(val[50].prompt + val[50].choices[val[50].label] + "\n\n" + val[51].prompt)
    assert len(text) < len(source_text("bb_epistemic")[1])
    assert calibration_identity("bb_epistemic", None, 50) != calibration_identity("bb_epistemic", None)
    with pytest.raises(UserError, match="all among"):
        source_text("bb_epistemic", len(val))
