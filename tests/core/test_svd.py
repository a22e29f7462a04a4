"""The SVD engine: computed once per matrix, then served from memory or disk."""

from __future__ import annotations

import pytest
import torch

from laserlm import edited
from laserlm.core.svd import SVDCache, weight_key

from conftest import build_tiny


def test_one_decomposition_serves_every_rank(tmp_path):
    model = build_tiny("llama")
    cache = SVDCache(disk=tmp_path)
    w = model.model.layers[1].mlp.gate_proj.weight  # 64 x 32: rho 0.9, 0.5, 0.1 keep 28, 16, 3
    for amount, k in ((0.9, 28), (0.5, 16), (0.1, 3), ("k=2", 2)):
        with edited(model, [f"mlp_in:1:{amount}"], svd_cache=cache):
            assert torch.linalg.matrix_rank(w.detach()).item() == k
    assert cache.computed == 1
    fresh = SVDCache(disk=tmp_path)
    with edited(model, ["mlp_in:1:0.5"], svd_cache=fresh):
        pass
    assert fresh.computed == 0 and fresh.disk_hits == 1


def test_cache_is_keyed_by_content():
    a = torch.randn(8, 4)
    assert weight_key(a) == weight_key(a.clone())
    b = a.clone()
    b[0, 0] += 1e-3
    assert weight_key(a) != weight_key(b)
    assert weight_key(a) != weight_key(a.double())


def test_float32_svd_for_half_weights():
    w = torch.randn(16, 8).to(torch.bfloat16)
    svd = SVDCache(disk=None).get(w)
    assert svd.U.dtype == torch.float32
    torch.testing.assert_close(svd.U @ torch.diag(svd.S) @ svd.Vh, w.float(), atol=1e-5, rtol=1e-5)


def test_randomized_is_close_on_a_low_rank_matrix():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(60, 5, generator=g) @ torch.randn(5, 40, generator=g)
    torch.manual_seed(0)
    rnd = SVDCache(disk=None, mode="randomized").get(w, k=5)
    exact = SVDCache(disk=None).get(w)
    torch.testing.assert_close(rnd.S[:5], exact.S[:5], rtol=1e-4, atol=1e-4)


def test_randomized_factors_rebuild_the_matrix_and_its_exact_truncation():
    """U and Vh of the randomized SVD, not only S: a rank-5 weight edited at k=5 comes back whole, and at k=3 it
    equals the exact SVD's rank-3 truncation (a rank-5 matrix has its range found exactly by 15 samples)."""
    model = build_tiny("llama")
    lin = model.model.layers[1].mlp.gate_proj
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 5, generator=g) @ torch.randn(5, 32, generator=g)
    with torch.no_grad():
        lin.weight.copy_(w)
    U, S, Vh = torch.linalg.svd(w, full_matrices=False)
    rnd = SVDCache(disk=None, mode="randomized")
    with edited(model, ["mlp_in:1:k=5"], svd_cache=rnd):
        torch.testing.assert_close(lin.weight.detach(), w, atol=1e-4, rtol=1e-4)
    with edited(model, ["mlp_in:1:k=3"], svd_cache=rnd):
        torch.testing.assert_close(lin.weight.detach(), U[:, :3] @ torch.diag(S[:3]) @ Vh[:3], atol=1e-4, rtol=1e-4)


def test_corrupt_disk_entry_is_recomputed(tmp_path):
    w = torch.randn(12, 6)
    SVDCache(disk=tmp_path).get(w)
    for f in tmp_path.rglob("*.safetensors"):
        f.write_bytes(b"garbage")
    cache = SVDCache(disk=tmp_path)
    svd = cache.get(w)
    assert cache.computed == 1 and cache.disk_hits == 0
    torch.testing.assert_close(svd.U @ torch.diag(svd.S) @ svd.Vh, w, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(svd.S, torch.linalg.svdvals(w), atol=1e-5, rtol=1e-5)
    again = SVDCache(disk=tmp_path)  # the garbage was replaced by a good entry
    torch.testing.assert_close(again.get(w).S, svd.S)
    assert again.disk_hits == 1 and again.computed == 0


def test_each_weight_is_hashed_once_per_version():
    model = build_tiny("llama")
    cache = SVDCache(disk=None)
    for rho in (0.9, 0.5, 0.1, 0.05):
        with edited(model, ["mlp_in:1:" + str(rho), "mlp_out:2:0.5"], svd_cache=cache):
            pass
    assert cache.key_of.hashed == 2 and cache.computed == 2
    w = model.model.layers[1].mlp.gate_proj.weight
    with torch.no_grad():
        w.mul_(2)  # an in-place write bumps the version: the key must change, and the SVD with it
    with edited(model, ["mlp_in:1:0.5"], svd_cache=cache):
        pass
    assert cache.key_of.hashed == 3 and cache.computed == 3
    torch.testing.assert_close(cache.get(w).S, torch.linalg.svdvals(w.detach()), rtol=1e-5, atol=1e-5)
    old = w.data
    w.data = torch.randn_like(old)  # rebinding the storage is seen too
    assert cache.key_of(w) == weight_key(w) != weight_key(old)


def test_the_disk_cache_keeps_to_its_bound_dropping_the_least_recently_used(tmp_path):
    import os
    import time

    ws = [torch.randn(64, 64, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    entry = 2 * 64 * 64 * 4 + 64 * 4  # U, Vh and S in float32, without the small header
    cache = SVDCache(disk=tmp_path, disk_max_bytes=int(2.6 * entry) + 600)
    for i, w in enumerate(ws[:2]):
        cache.get(w)
        for f in tmp_path.rglob("*.safetensors"):  # distinct, ordered last-use times
            if weight_key(w) in f.name:
                os.utime(f, (time.time() - 100 + i, time.time() - 100 + i))
    SVDCache(disk=tmp_path, disk_max_bytes=cache.disk_max_bytes).get(ws[0])  # a disk hit refreshes ws[0]
    cache.get(ws[2])  # over the bound: ws[1], the least recently used, goes
    names = {f.stem for f in tmp_path.rglob("*.safetensors")}
    assert names == {weight_key(ws[0]), weight_key(ws[2])}
    total = sum(f.stat().st_size for f in tmp_path.rglob("*.safetensors"))
    assert total <= cache.disk_max_bytes


def test_randomized_mode_takes_the_exact_spectrum_outside_top_k():
    model = build_tiny("llama")
    exact, rnd = SVDCache(disk=None), SVDCache(disk=None, mode="randomized")
    w = model.model.layers[1].mlp.gate_proj.weight.detach().clone()
    for spec in ("bottom/mlp_in:1:0.25", "mp/mlp_in:1"):
        with edited(model, [spec], svd_cache=exact):
            want = model.model.layers[1].mlp.gate_proj.weight.detach().clone()
        with edited(model, [spec], svd_cache=rnd):
            got = model.model.layers[1].mlp.gate_proj.weight.detach().clone()
        torch.testing.assert_close(got, want)
    assert len(rnd.get(w).S) == min(w.shape)  # no k: the whole spectrum, exactly
    assert len(rnd.get(w, k=2).S) == 2 + 10  # top-k only: k + oversampling


def test_authors_mode_makes_their_svd_lowrank_call_bit_for_bit():
    from laserlm.core.ranks import authors_rank

    w = torch.randn(48, 40, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    got = SVDCache(disk=None, mode="authors", seed=7).get(w, k=5)
    assert torch.equal(torch.rand(3), before)  # the global generator is left where it was
    torch.manual_seed(7)
    U, S, V = torch.svd_lowrank(w.float(), q=5, niter=2)  # the authors' call (src/laser/matrix_utils.py:39-50)
    assert torch.equal(got.U, U) and torch.equal(got.S, S) and torch.equal(got.Vh, V.mT)
    other = SVDCache(disk=None, mode="authors", seed=8).get(w, k=5)
    assert not torch.equal(other.U, got.U)
    model = build_tiny("llama")
    weight = model.model.layers[1].mlp.gate_proj.weight  # 64 x 32: their rule keeps int(32 * 0.1) = 3
    k = authors_rank(0.1, (64, 32))
    torch.manual_seed(0)
    U, S, V = torch.svd_lowrank(weight.detach().float(), q=k, niter=2)
    with edited(model, ["mlp_in:1:0.1"], svd_cache=SVDCache(disk=None, mode="authors", seed=0)) as steps:
        assert steps[0].k == k == 3
        torch.testing.assert_close(weight, U @ torch.diag(S) @ V.T, atol=1e-6, rtol=1e-5)


def test_the_authors_rank_rule_is_one_less_where_rho_times_min_is_whole():
    from laserlm import UserError
    from laserlm.core.ranks import authors_rank, rank_for

    assert authors_rank(0.01, (1000, 4000)) == 9 and rank_for(0.01, (1000, 4000)) == 10  # 9.99999... -> 9
    assert authors_rank(0.01, (4096, 11008)) == rank_for(0.01, (4096, 11008)) == 40
    assert authors_rank(0.005, (4096, 11008)) == 20 and authors_rank(0.9, (10, 10)) == 9
    assert authors_rank(0.6, (10, 10)) == 6 and authors_rank("k=7", (64, 32)) == 7
    with pytest.raises(UserError, match="keeps 0 components"):
        authors_rank(0.01, (100, 100))  # int(0.99999...) = 0: their code would fail
