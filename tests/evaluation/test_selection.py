"""Selection figures on cases small enough to compute by hand: moments of grouped gains, the max-t p-value against a
brute enumeration of every resample, the out-of-bag gain of in-bag picks, shrinkage, and the rules' picks."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from laserlm.evaluation.selection import (Table, bootstrap_weights, corrected_gain, p_any, pick, select, shrunk,
                                          verdict_text)


def test_moments_of_row_and_group_gains_by_hand():
    base, cand = [0, 1, 0, 1], [1, 1, 0, 0]  # gains 1, 0, 0, -1
    mean, se = Table.build(base, [cand]).moments()
    assert float(mean[0]) == 0.0
    assert float(se[0]) == pytest.approx(math.sqrt(2 / 3) / 2)  # sample sd / sqrt(n)
    # groups {a: rows 0, 1; b: rows 2, 3}: group sums 1 and -1 of 2 rows each; two units
    mean, se = Table.build(base, [cand], groups=["a", "a", "b", "b"]).moments()
    assert float(mean[0]) == 0.0 and float(se[0]) == pytest.approx(0.5)
    # a loss: lower is better, so the gain is base - candidate
    mean, _ = Table.build([2.0, 3.0], [[1.0, 1.0]], lower=True).moments()
    assert float(mean[0]) == pytest.approx(1.5)


def _brute_p(gains: list[list[float]]) -> float:
    """SPA_c p-value over every one of the n^n equally likely row resamples, written out loop by loop."""
    n = len(gains[0])
    means = [sum(g) / n for g in gains]
    ses = [math.sqrt(sum((x - m) ** 2 for x in g) / (n - 1) / n) for g, m in zip(gains, means)]
    t = [m / s for m, s in zip(means, ses)]
    edge = -math.sqrt(2 * math.log(math.log(n)))
    null = [m if tk <= edge else 0.0 for m, tk in zip(means, t)]
    observed = max(max(t), 0.0)
    draws = list(itertools.product(range(n), repeat=n))
    hits = 0
    for idx in draws:
        stat = max(0.0, max((sum(g[i] for i in idx) / n - m + mu) / s for g, m, mu, s in zip(gains, means, null, ses)))
        hits += stat >= observed - 1e-12
    return (hits + 1) / (len(draws) + 1)


def test_the_max_t_p_value_equals_a_brute_enumeration():
    base = [0, 0, 1, 0, 1]
    cands = [[1, 0, 1, 1, 1], [0, 1, 0, 0, 1], [0, 0, 0, 0, 0]]  # +0.4, 0, -0.4
    table = Table.build(base, cands)
    n = len(base)
    draws = list(itertools.product(range(n), repeat=n))
    weights = torch.zeros(len(draws), n, dtype=torch.float64)
    for b, idx in enumerate(draws):
        for i in idx:
            weights[b, i] += 1
    gains = [[c - b for c, b in zip(cand, base)] for cand in cands]
    assert p_any(table, weights) == pytest.approx(_brute_p(gains), abs=1e-12)
    # the seeded Monte Carlo version is near the exact one
    assert abs(p_any(table, bootstrap_weights(n, 20_000, 0)) - _brute_p(gains)) < 0.01


def test_no_gain_means_p_one_and_a_base_identical_candidate_is_left_out():
    table = Table.build([1, 0, 1, 0], [[1, 0, 1, 0], [0, 0, 1, 0]])  # identical; worse
    assert p_any(table, bootstrap_weights(4, 100, 0)) == 1.0
    assert int(pick(table, *[x[None] for x in table.moments()], "best")[0]) == -1


def test_the_out_of_bag_gain_of_the_in_bag_pick_by_hand():
    base = [0, 0, 0, 0]
    cands = [[1, 1, 0, 0], [0, 0, 1, 0]]
    table = Table.build(base, cands)
    weights = torch.tensor([[2, 1, 1, 0],  # in-bag: cand 0 gains 3/4, cand 1 1/4 -> cand 0; out-of-bag row 3: 0
                            [0, 0, 3, 1],  # in-bag: cand 1 (3/4) -> out-of-bag rows 0, 1: cand 1 gains 0
                            [1, 0, 0, 3],  # in-bag: cand 0 (1/4) -> out-of-bag rows 1, 2: cand 0 gains 1/2
                            [0, 0, 0, 4]], dtype=torch.float64)  # nothing gains: the base, 0 on rows 0-2
    mean, ci = corrected_gain(table, weights, "best")
    assert mean == pytest.approx((0 + 0 + 0.5 + 0) / 4)
    assert ci[1] == pytest.approx(torch.quantile(torch.tensor([0, 0, 0.5, 0.0], dtype=torch.float64), 0.975).item())


def test_shrinkage_toward_the_layers_mean_by_hand():
    table = Table(torch.zeros(4, 1, dtype=torch.float64), torch.ones(1), keys=[0, 0, 1, 1])
    mean = torch.tensor([[0.10, 0.00, 0.02, 0.04]], dtype=torch.float64)
    se = torch.tensor([[0.02, 0.02, 0.02, 0.02]], dtype=torch.float64)
    # layer means 0.05 and 0.03; residuals +-0.05, +-0.01; dof 4 - 2 = 2
    tau2 = (0.05 ** 2 * 2 + 0.01 ** 2 * 2) / 2 - 0.02 ** 2
    w = tau2 / (tau2 + 0.02 ** 2)
    expected = [0.05 + w * 0.05, 0.05 - w * 0.05, 0.03 - w * 0.01, 0.03 + w * 0.01]
    assert shrunk(table, mean, se)[0].tolist() == pytest.approx(expected)


def test_rules_never_pick_an_edit_worse_than_the_base_and_lcb_wants_a_margin():
    base = [0] * 10
    worse = Table.build(base, [[0] * 9 + [-1], [-1] * 2 + [0] * 8])
    for rule in ("best", "lcb", "shrink"):
        assert select(worse, rule)["pick"] == -1 and select(worse, rule)["verdict"] == "base"
    # one row of ten better: the argmax takes it, the lower bound (0.1 - 1.645 * 0.1) does not
    slight = Table.build(base, [[1] + [0] * 9])
    assert select(slight, "best")["pick"] == 0 and select(slight, "lcb")["pick"] == -1
    assert select(slight, "paper")["pick"] == 0


def _table(planted: int | None, n: int = 300, seed: int = 0) -> Table:
    """20 candidates that agree with the base on 70% of rows; `planted` redraws its other rows as always right
    (true gain 0.3 * 0.5 = +15 points), the others as the base's own coin (true gain 0)."""
    g = torch.Generator().manual_seed(seed)
    base = (torch.rand(n, generator=g) < 0.5).double()
    cands = []
    for k in range(20):
        flip = torch.rand(n, generator=g) < 0.3
        redraw = (torch.rand(n, generator=g) < (1.0 if k == planted else 0.5)).double()
        cands.append(torch.where(flip, redraw, base).tolist())
    return Table.build(base.tolist(), cands, keys=[k // 4 for k in range(20)])


def test_a_planted_gain_is_called_an_edit_and_corrected_near_its_truth():
    table = _table(planted=7)
    out = select(table, "best")
    assert out["pick"] == 7 and out["verdict"] == "edit" and out["p_any"] < 0.01
    assert out["val_gain"] == pytest.approx(float(table.sums[7].sum()) / 300)
    assert abs(out["val_gain_corrected"] - 0.15) < 0.04
    lo, hi = out["val_gain_corrected_ci"]
    assert lo < 0.15 < hi
    assert "an edit beats the base" in verdict_text(out) and "best of 20" in verdict_text(out)


def test_under_the_null_the_raw_gain_is_optimistic_and_the_correction_is_not():
    raw, corrected, edits = [], [], 0
    for seed in range(10):
        out = select(_table(planted=None, seed=seed), "best", resamples=500)
        raw.append(out["val_gain"])
        corrected.append(out["val_gain_corrected"])
        edits += out["verdict"] == "edit"
    assert sum(raw) / 10 > 0.02  # the best of 20 noisy zeros
    assert abs(sum(corrected) / 10) < 0.01
    assert edits <= 1
