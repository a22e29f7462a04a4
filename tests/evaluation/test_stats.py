"""Paired comparisons by hand, and best.json's test intervals against per-row predictions of `laser eval`."""

from __future__ import annotations

import json
import math

import pytest

from laserlm.cli.main import main
from laserlm.core.edits import Edit
from laserlm.evaluation.stats import compare, mcnemar_exact, paired_bootstrap

from conftest import cloze_rows


def test_mcnemar_counts_the_discordant_rows_and_is_exact():
    out = mcnemar_exact([1, 1, 0, 0, 0, 1], [0, 1, 1, 1, 1, 1])
    assert (out["gained"], out["lost"]) == (3, 1)
    assert out["p"] == pytest.approx(2 * (1 + 4) / 16)  # X ~ Bin(4, 1/2): 2 P[X <= 1]
    assert mcnemar_exact([1, 0], [1, 0])["p"] == 1.0
    assert mcnemar_exact([0] * 10, [1] * 10)["p"] == pytest.approx(2 / 2 ** 10)


def test_the_bootstrap_resamples_rows_and_is_seeded():
    assert paired_bootstrap([0.0, 0.0, 0.0], [0.5, 0.5, 0.5])["ci"] == [0.5, 0.5]
    two = paired_bootstrap([0, 0], [1, 0], resamples=1000)  # resampled means are 0, 0.5 or 1
    assert two["diff"] == 0.5 and two["ci"] == [0.0, 1.0]
    base = [float(i % 3 == 0) for i in range(200)]
    other = [float(i % 3 == 0 or i % 7 == 0) for i in range(200)]
    a, b = paired_bootstrap(base, other), paired_bootstrap(base, other)
    assert a == b
    # Against the exact bootstrap distribution: four rows with differences 0, 0, 0, 1 resample to a mean of k/4,
    # k ~ Bin(4, 1/4), whose cumulative mass is .316, .738, .949, .996, 1: the 2.5% and 97.5% points are 0 and 3/4,
    # far from the steps, so 10,000 resamples land on them.
    assert paired_bootstrap([0.0] * 4, [0.0, 0.0, 0.0, 1.0])["ci"] == [0.0, 0.75]
    assert "mcnemar" in compare(base, other) and "mcnemar" not in compare([0.5, 1.0], [1.5, 1.0])
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0, 2.0])


def test_each_end_of_the_interval_is_the_normal_quantile_where_the_mean_is_normal():
    """400 continuous differences: the resampled mean is normal to well within the check, so each end of the
    interval is diff -/+ z * se, z the normal quantile of the level (1.96 at 95%, 1.28 at 80%), and the ends of a
    100,000-resample interval land within 0.03 se of them. The level's tails, not only its width, are checked:
    taking (1 - level) / 2.5 for each tail moves the ends by 0.09 se at 95% and 0.12 se at 80%."""
    from statistics import NormalDist

    other = [math.sin(1.3 * i) + 0.3 * math.cos(0.7 * i) for i in range(400)]
    mean = sum(other) / len(other)
    se = math.sqrt(sum((v - mean) ** 2 for v in other) / len(other)) / math.sqrt(len(other))
    for level in (0.95, 0.8):
        z = NormalDist().inv_cdf(0.5 + level / 2)
        lo, hi = paired_bootstrap([0.0] * len(other), other, level=level, resamples=100_000)["ci"]
        assert (mean - lo) / se == pytest.approx(z, abs=0.03)
        assert (hi - mean) / se == pytest.approx(z, abs=0.03)


def test_best_json_carries_paired_intervals_from_the_test_rows(tiny_with_tokenizer, tmp_path):
    task = tmp_path / "rows.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in cloze_rows(300, seed=9)))
    out = tmp_path / "run"
    assert main(["search", str(tiny_with_tokenizer), "-t", str(task), "--layers", "all", "--rhos", "0.5,0.1,k=1",
                 "--no-svd-cache", "--select", "paper", "-o", str(out)]) == 0
    best = json.loads((out / "best.json").read_text())["best"]
    assert best["edits"], "the search selected no edit"
    preds = {}
    for name, extra in (("base", []), ("best", ["-e", str(Edit.from_json(best["edits"][0]))])):
        assert main(["eval", str(tiny_with_tokenizer), "-t", str(task), "--split", "test", *extra,
                     "--predictions", str(tmp_path / f"{name}.jsonl")]) == 0
        preds[name] = [json.loads(x)["top1"] for x in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    gained = sum(b and not a for a, b in zip(preds["base"], preds["best"]))
    lost = sum(a and not b for a, b in zip(preds["base"], preds["best"]))
    assert best["test_paired"]["top1"]["mcnemar"] == {**mcnemar_exact(preds["base"], preds["best"]),
                                                       "gained": gained, "lost": lost}
    assert best["test_diff"] == pytest.approx((gained - lost) / len(preds["base"]))
    assert best["test_p_mcnemar"] == mcnemar_exact(preds["base"], preds["best"])["p"]
    assert best["test_ci"] == paired_bootstrap([float(x) for x in preds["base"]], [float(x) for x in preds["best"]])["ci"]
    assert set(best["test_paired"]) == {"top1", "top10", "logloss"}
    assert "test - base [95% CI]" in (out / "report.md").read_text()


def test_grouped_bootstrap_resamples_groups_on_a_hand_case():
    """Eight rows, differences 1,1,1,1,0,0,0,0. As two groups of four, a resample is aa, ab, ba or bb: means 1,
    .5, .5, 0 with chances 1/4, 1/2, 1/4, so the 95% interval is [0, 1]. As eight rows, the mean is k/8 with
    k ~ Bin(8, 1/2) (cumulative .004, .035, ..., .965, .996): the interval is [1/8, 7/8]."""
    base, other = [0.0] * 8, [1.0] * 4 + [0.0] * 4
    grouped = paired_bootstrap(base, other, groups=["a"] * 4 + ["b"] * 4)
    assert grouped["ci"] == [0.0, 1.0] and grouped["groups"] == 2 and grouped["diff"] == 0.5
    assert paired_bootstrap(base, other)["ci"] == [0.125, 0.875]
    # Every row its own group is the row bootstrap, to the bit.
    assert paired_bootstrap(base, other, groups=list("abcdefgh")) == paired_bootstrap(base, other)


def test_groups_of_identical_rows_widen_the_interval():
    """40 groups of 5 identical rows: the same values counted as 200 independent rows give an interval about
    sqrt(5) = 2.2 times too narrow."""
    import random

    rng = random.Random(0)
    base, other, groups = [], [], []
    for g in range(40):
        b, o = float(rng.random() < 0.4), float(rng.random() < 0.55)
        base += [b] * 5
        other += [o] * 5
        groups += [f"q{g}"] * 5
    wide, narrow = paired_bootstrap(base, other, groups=groups)["ci"], paired_bootstrap(base, other)["ci"]
    assert (wide[1] - wide[0]) >= 1.8 * (narrow[1] - narrow[0])


def test_the_group_sign_flip_is_mcnemar_for_single_rows_and_counts_groups_once():
    from laserlm.evaluation.stats import sign_flip

    base = [1] * 3 + [0] * 9 + [1] * 8
    other = [0] * 3 + [1] * 9 + [1] * 8  # 9 gained, 3 lost: McNemar p = 2 P[Bin(12, 1/2) <= 3] = 0.146
    exact = mcnemar_exact([bool(v) for v in base], [bool(v) for v in other])["p"]
    flip = sign_flip(base, other, [f"#{i}" for i in range(20)])
    assert exact == pytest.approx(2 * sum(math.comb(12, i) for i in range(4)) / 2 ** 12)
    assert flip["p"] == pytest.approx(exact, abs=0.01) and flip["gained"] == 9 and flip["lost"] == 3
    # The same rows as 4 groups (each one question): nets -3, +5, +4 and 0, total 6. Of the 8 sign patterns of
    # (3, 5, 4), those whose total is at least 6 in size are 12, 6, -6, -12: p = 4/8, not McNemar's 0.146.
    groups = ["l"] * 3 + ["g1"] * 5 + ["g2"] * 4 + ["x"] * 8
    grouped = sign_flip(base, other, groups)
    assert grouped["groups"] == 4 and grouped["p"] == pytest.approx(0.5, abs=0.02)
    assert "test" not in compare(base, other)["mcnemar"]
    assert compare(base, other, groups=groups)["mcnemar"]["test"] == "group sign-flip"


def test_a_task_files_groups_reach_the_test_interval(tiny_with_tokenizer, tmp_path):
    """Rows carrying "group" (three prompts of one question) stay in one split, and best.json's interval is the
    cluster bootstrap of the stored per-row values over those groups."""
    rows = cloze_rows(240, seed=9)
    for i, r in enumerate(rows):
        r["group"] = f"q{i // 3}"
    task = tmp_path / "rows.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    assert main(["search", str(tiny_with_tokenizer), "-t", str(task), "--layers", "1-2", "--rhos", "0.1,k=1",
                 "--no-svd-cache", "-o", str(out)]) == 0
    best = json.loads((out / "best.json").read_text())["best"]
    tests = [json.loads(line) for line in (out / "test.jsonl").read_text().splitlines()]
    base_row = next(r for r in tests if not r["edits"])
    best_row = next(r for r in tests if r["edits"] == best["edits"])
    groups = base_row["groups"]
    assert len(groups) == len(base_row["per_row"]["top1"]) and len(set(groups)) == len(groups) // 3
    want = paired_bootstrap(base_row["per_row"]["top1"], best_row["per_row"]["top1"], groups=groups)
    assert best["test_ci"] == want["ci"] and best["test_paired"]["top1"]["groups"] == len(groups) // 3
    assert best["test_paired"]["top1"]["mcnemar"]["test"] == "group sign-flip"
