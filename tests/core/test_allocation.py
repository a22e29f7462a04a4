"""Rank allocation for a size target: each matrix's loss curve is the relative output error of the method's own
reduction on the calibration inputs, and the allocations meet the budget (the loss one optimally, on small cases
checked by brute force)."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch

from laserlm import UserError
from laserlm.core.allocation import Curve, budget_for, by_loss, curve_for, uniform
from laserlm.core.calibrated import InputStats
from laserlm.core.methods import get_method
from laserlm.core.svd import SVDCache


def _target(seed=0, m=7, n=5, tokens=40):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(m, n, generator=g)
    X = torch.randn(tokens, n, generator=g) * torch.linspace(0.2, 3.0, n)  # uneven channels: the methods differ
    gram = (X.T @ X).double() / tokens
    stats = InputStats(X.abs().mean(0).double(), tokens, f"k{seed}", gram_tensor=gram)
    return SimpleNamespace(weight=W, transposed=False, name="m", index=None,
                           module=SimpleNamespace(laser_input_stats=stats)), gram


def _output_error(W, W2, gram):
    D = (W - W2).double()
    return float(torch.trace(D @ gram @ D.T))


@pytest.mark.parametrize("method", ["svd", "asvd", "whiten"])
def test_the_curve_is_the_relative_output_error_of_the_methods_own_reduction(method):
    target, gram = _target()
    cache = SVDCache(disk=None)
    curve = curve_for(target, "mlp_out", 3, method, cache)
    W = target.weight
    total = _output_error(W, torch.zeros_like(W), gram)
    assert curve.loss[0] == pytest.approx(1.0) and curve.loss[-1] == pytest.approx(0.0, abs=1e-9)
    fn = get_method(method).fn
    for k in range(1, 5):
        if method == "svd":
            U, S, Vh = torch.linalg.svd(W.double(), full_matrices=False)
            W2 = (U[:, :k] * S[:k]) @ Vh[:k]
        else:
            W2 = fn(W, k, target.module.laser_input_stats, cache).matrix()
        assert float(curve.loss[k]) == pytest.approx(_output_error(W, W2, gram) / total, rel=1e-4, abs=1e-7)


def test_whitening_has_the_smallest_output_error_at_every_rank():
    target, _ = _target(seed=3)
    cache = SVDCache(disk=None)
    curves = {m: curve_for(target, "t", 0, m, cache).loss for m in ("svd", "asvd", "whiten")}
    assert bool((curves["whiten"] <= curves["svd"] + 1e-9).all()) and bool((curves["whiten"] <= curves["asvd"] + 1e-9).all())
    assert float(curves["whiten"][2]) < float(curves["svd"][2]) - 1e-3


def _curve(shape, seed):
    s = torch.rand(min(shape), generator=torch.Generator().manual_seed(seed)).sort(descending=True).values ** 2
    tail = torch.cat([s.flip(0).cumsum(0).flip(0), torch.zeros(1)]).double()
    return Curve("t", seed, shape, tail / tail[0])


def test_the_loss_allocation_fits_and_beats_uniform_against_brute_force():
    curves = [_curve((12, 10), 1), _curve((10, 14), 2), _curve((16, 8), 3)]
    for budget in (150, 230, 300):
        ks = by_loss(curves, budget)
        options = [list(range(1, c.max_factored + 1)) + [c.max_rank] for c in curves]
        feasible = [combo for combo in itertools.product(*options)
                    if sum(c.params(k) for c, k in zip(curves, combo)) <= budget]
        best = min(sum(float(c.loss[k]) for c, k in zip(curves, combo)) for combo in feasible)
        assert sum(c.params(k) for c, k in zip(curves, ks)) <= budget
        got = sum(float(c.loss[k]) for c, k in zip(curves, ks))
        # A Lagrangian solution of a discrete knapsack: at most the uniform allocation's loss, and near the optimum
        # (not always on it: the dense/factored jump makes the problem non-convex).
        assert best - 1e-12 <= got <= sum(float(c.loss[k]) for c, k in zip(curves, uniform(curves, budget))) + 1e-12


def test_uniform_keeps_one_fraction_of_every_matrix():
    a, b = Curve("t", 0, (8, 8), None), Curve("t", 1, (8, 4), None)
    # f = 0.5: a keeps floor(0.5 * 64 / 16) = 2 (32 numbers), b floor(0.5 * 32 / 12) = 1 (12): 44 <= 46
    assert uniform([a, b], 46) == [2, 1]
    assert uniform([a, b], 10 ** 6) == [8, 4]  # all fits: nothing reduced
    assert a.params(3) == 48 and a.params(4) == 64  # 4 x 16 is no smaller than dense: stored dense


def test_a_budget_out_of_reach_is_refused():
    curves = [Curve("t", 0, (8, 8), None)]
    assert budget_for(1000, 0.97, curves) == 64 - 30
    with pytest.raises(UserError, match="can give at most 48"):
        budget_for(1000, 0.9, curves)
