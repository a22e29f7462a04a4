"""Clustered LASER (clusterC): a matrix made of C low-rank row blocks is recovered exactly at the blocks' rank,
where plain SVD at the same parameter count cannot; reversible, cached, and for GPT-2's Conv1D the groups are of
output features."""

from __future__ import annotations

import pytest
import torch

from laserlm import UserError, edited
from laserlm.core.clusters import cluster_rows
from laserlm.core.methods import get_method
from laserlm.core.svd import SVDCache

from conftest import build_tiny


def union_of_blocks(c: int, size: int, rank: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, true group of each row): c blocks of `size` rows, each block of rank `rank` in R^n, rows shuffled."""
    g = torch.Generator().manual_seed(seed)
    blocks = [torch.randn(size, rank, generator=g) @ torch.randn(rank, n, generator=g) for _ in range(c)]
    perm = torch.randperm(c * size, generator=g)
    return torch.cat(blocks)[perm], torch.arange(c).repeat_interleave(size)[perm]


def _relative(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_the_groups_are_the_blocks():
    w, truth = union_of_blocks(4, 16, 2, 64, seed=0)
    labels = cluster_rows(w, 4, 0.125)
    assert sorted(labels.bincount().tolist()) == [16, 16, 16, 16]
    assert all(len(set(truth[labels == j].tolist())) == 1 for j in range(4))
    assert torch.equal(labels, cluster_rows(w, 4, 0.125))  # seeded: the same groups every time
    assert labels[0] == 0  # groups numbered by their first row


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_cluster4_recovers_a_union_of_low_rank_blocks_where_svd_cannot(arch):
    model = build_tiny(arch)
    module = model.model.layers[0].mlp.gate_proj if arch == "llama" else model.transformer.h[0].mlp.c_fc
    out_f, in_f = (64, 32) if arch == "llama" else (128, 32)  # GPT-2's Conv1D stores in x out
    w, _ = union_of_blocks(4, out_f // 4, 2, in_f, seed=1)
    with torch.no_grad():
        module.weight.copy_(w if arch == "llama" else w.T)
    original = module.weight.detach().clone()
    rho = 2 / min(out_f // 4, in_f)  # floor(rho * min(group, n)) = 2 per group: the blocks' rank
    cache = SVDCache(disk=None)
    with edited(model, [f"cluster4/mlp_in:0:{rho}"], svd_cache=cache):
        got = module.weight.detach().clone()
    assert torch.equal(module.weight, original)  # restored bit-exact
    assert _relative(got, original) < 1e-5
    params = 4 * 2 * (out_f // 4 + in_f)  # four rank-2 pairs
    k = params // (out_f + in_f)  # plain SVD with no more numbers
    with edited(model, [f"mlp_in:0:k={k}"], svd_cache=cache):
        plain = module.weight.detach().clone()
    assert _relative(plain, original) > 0.2
    computed = cache.computed
    with edited(model, [f"cluster4/mlp_in:0:{rho}"], svd_cache=cache):
        assert torch.equal(module.weight, got)
    assert cache.computed == computed  # the groups and their SVDs come from the cache


def test_cluster1_is_svd_and_groups_persist_on_disk(tmp_path):
    model = build_tiny("llama")
    module = model.model.layers[1].mlp.down_proj
    with edited(model, ["mlp_out:1:0.25"], svd_cache=SVDCache(disk=None)):
        svd = module.weight.detach().clone()
    with edited(model, ["cluster1/mlp_out:1:0.25"], svd_cache=SVDCache(disk=None)):
        torch.testing.assert_close(module.weight, svd, atol=1e-6, rtol=1e-5)
    with edited(model, ["cluster2/mlp_out:1:k=3"], svd_cache=SVDCache(disk=tmp_path)):
        first = module.weight.detach().clone()
    again = SVDCache(disk=tmp_path)
    with edited(model, ["cluster2/mlp_out:1:k=3"], svd_cache=again):
        assert torch.equal(module.weight, first)
    assert again.computed == 0 and again.disk_hits == 1
    assert get_method("cluster8").clusters == 8 and get_method("cluster8").amount == "rank"
    with pytest.raises(UserError, match="clusterC"):
        get_method("clusterx")
