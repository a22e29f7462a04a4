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
