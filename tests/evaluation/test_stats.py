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
    d = [o - x for x, o in zip(base, other)]
    se = math.sqrt(sum((v - a["diff"]) ** 2 for v in d) / len(d)) / math.sqrt(len(d))
    assert a["ci"][1] - a["ci"][0] == pytest.approx(2 * 1.96 * se, rel=0.1)  # the normal approximation
    assert "mcnemar" in compare(base, other) and "mcnemar" not in compare([0.5, 1.0], [1.5, 1.0])
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0, 2.0])


def test_best_json_carries_paired_intervals_from_the_test_rows(tiny_with_tokenizer, tmp_path):
    task = tmp_path / "rows.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in cloze_rows(300, seed=9)))
    out = tmp_path / "run"
    assert main(["search", str(tiny_with_tokenizer), "-t", str(task), "--layers", "all", "--rhos", "0.5,0.1,k=1",
                 "--no-svd-cache", "-o", str(out)]) == 0
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
