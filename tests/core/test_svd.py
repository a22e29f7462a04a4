"""The SVD engine: computed once per matrix, then served from memory or disk."""

from __future__ import annotations

import torch

from laserlm import edited
from laserlm.core.svd import SVDCache, weight_key

from conftest import build_tiny


def test_one_decomposition_serves_every_rank(tmp_path):
    model = build_tiny("llama")
    cache = SVDCache(disk=tmp_path)
    for rho in (0.9, 0.5, 0.1, "k=2"):
        amount = rho if isinstance(rho, str) else rho
        spec = f"mlp_in:1:{amount}"
        with edited(model, [spec], svd_cache=cache):
            pass
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


def test_corrupt_disk_entry_is_recomputed(tmp_path):
    w = torch.randn(12, 6)
    SVDCache(disk=tmp_path).get(w)
    for f in tmp_path.rglob("*.safetensors"):
        f.write_bytes(b"garbage")
    cache = SVDCache(disk=tmp_path)
    cache.get(w)
    assert cache.computed == 1


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


def test_memory_entries_live_on_the_cpu():
    cache = SVDCache(disk=None)
    cache.get(torch.randn(10, 6))
    assert all(t.device.type == "cpu" for svd in cache._memory.values() for t in (svd.U, svd.S, svd.Vh))


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
