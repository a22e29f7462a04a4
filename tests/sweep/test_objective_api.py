"""laserlm.search(model, objective) on a tiny non-HF module, and `laser search --objective`: selection, test,
composition and the report by hand; a loss minimised; resume after SIGKILL; bad objectives refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import laserlm
from laserlm.cli.main import main
from laserlm.models.python import load_attr

from conftest import kill_when

TOY = Path(__file__).with_name("toy_objective.py")
PATTERNS = ["blocks.{layer}.fc1", "blocks.{layer}.fc2"]


def toy(name: str):
    return load_attr(f"{TOY}:{name}", "test")


def test_search_selects_tests_and_composes_as_computed_by_hand(tmp_path):
    model = toy("build")()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # fc1 is 16x8: rho 0.5, 0.25, 0.125 keep ranks 4, 2, 1. Base ranks [8, 8, 8]: score -4 - 0.16.
    result = laserlm.search(model, toy("objective"), run_dir=tmp_path / "run", types="fc1", module_patterns=PATTERNS,
                            rhos=[0.5, 0.25, 0.125], compose=True, progress=False)
    assert result["metric"] == "score" and result["lower_is_better"] is False
    assert result["base"]["val"] == pytest.approx(-4.16) and result["base"]["test"] == pytest.approx(95.84)
    assert result["best"]["edits"] == [{"method": "svd", "type": "fc1", "layer": 1, "amount": 0.5}]
    assert result["best"]["val"] == pytest.approx(-0.16) and result["best"]["test"] == pytest.approx(99.84)
    assert result["best"]["val_metrics"]["rank1"] == 4
    # Greedy stacking: layer 1's edit, then layers 0 and 2 at rank 1 (-0.01 * (1 + 1)).
    assert [(e["layer"], e["amount"]) for e in result["composed"]["edits"]] == [(1, 0.5), (0, 0.125), (2, 0.125)]
    assert result["composed"]["val"] == pytest.approx(-0.02) and result["composed"]["test"] == pytest.approx(99.98)
    rows = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 1 + 3 * 3 and all(r["n"] == 8 for r in rows)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "the search left an edit behind"
    report = (tmp_path / "run" / "report.md").read_text()
    assert "objective toy.score (version 1)" in report and "| `fc1:1:0.5` | -0.1600 | 4.0000 | 8 |" in report
    assert (tmp_path / "run" / "plot_score.png").stat().st_size > 0
    assert main(["report", str(tmp_path / "run")]) == 0  # laser report reads an objective's run too


def test_a_loss_is_minimised_and_a_plain_function_needs_its_metric(tmp_path):
    model = toy("build")()
    result = laserlm.search(model, toy("loss_objective"), run_dir=tmp_path / "a", types="fc1",
                            module_patterns=PATTERNS, rhos=[0.5, 0.25], progress=False)
    assert result["best"]["edits"][0]["layer"] == 1 and result["best"]["edits"][0]["amount"] == 0.25
    assert result["best"]["val"] == 0 and result["lower_is_better"] is True
    assert "(minimised)" in (tmp_path / "a" / "report.md").read_text()
    plain = laserlm.search(model, toy("loss"), metric="loss", higher_is_better=False, run_dir=tmp_path / "b",
                           types="fc1", module_patterns=PATTERNS, rhos=[0.5, 0.25], progress=False)
    assert plain["best"]["edits"] == result["best"]["edits"]
    with pytest.raises(laserlm.UserError, match="needs the metric to select on"):
        laserlm.search(model, toy("loss"), run_dir=tmp_path / "c", module_patterns=PATTERNS, progress=False)


def test_search_is_a_plain_function_and_the_package_a_plain_module():
    import inspect
    import sys
    import types

    import laserlm.sweep.job as job

    assert inspect.isfunction(laserlm.search) and laserlm.search.__module__ == "laserlm.api"
    assert "objective(model, split)" in laserlm.search.__doc__
    assert type(sys.modules["laserlm.sweep"]) is types.ModuleType and inspect.isfunction(job.run_job)


def _cli(out: Path, *extra: str) -> list[str]:
    return ["search", f"{TOY}:build", "--objective", f"{TOY}:objective", *sum((["--module-pattern", p] for p in PATTERNS), []),
            "--types", "fc1,fc2", "--rhos", "0.5,0.25,0.125,k=3", "--no-svd-cache", "-o", str(out), *extra]


def test_sigkill_then_rerun_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    full, killed, calls = tmp_path / "full", tmp_path / "killed", tmp_path / "calls.txt"
    assert main(_cli(full)) == 0
    results = killed / "results.jsonl"
    kill_when(_cli(killed), results, 4, env={**os.environ, "TOY_DELAY": "0.1"})
    n_before = len(results.read_text().splitlines())
    monkeypatch.setenv("TOY_CALLS", str(calls))
    assert main(_cli(killed)) == 0
    assert calls.read_text().splitlines().count("val") == 1 + 2 * 3 * 4 - n_before + 1  # + the mp baseline

    def by_key(path):
        return {r["key"]: r["metrics"] for r in map(json.loads, path.read_text().splitlines())}

    assert by_key(killed / "results.jsonl") == by_key(full / "results.jsonl")
    assert json.loads((killed / "best.json").read_text()) == json.loads((full / "best.json").read_text())


def test_another_objective_version_is_refused(tmp_path, monkeypatch, capsys):
    assert main(_cli(tmp_path / "run", "--layers", "0")) == 0
    monkeypatch.setenv("TOY_VERSION", "2")
    monkeypatch.setattr("laserlm.models.python._loaded", {})  # reimport the file, as a new process would
    assert main(_cli(tmp_path / "run", "--layers", "0")) == 2
    assert "holds a run for another task" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--objective", f"{TOY}:not_a_dict", "--metric", "x"], "returned list, not a dict"),
    (["--objective", f"{TOY}:no_score", "--metric", "score"], "returned no value for its metric 'score'"),
    (["--objective", f"{TOY}:loss"], "needs the metric to select on"),
    (["--objective", f"{TOY}:nothing"], "has no 'nothing'"),
    (["--objective", "missing.py:f"], "no such file missing.py"),
    (["--objective", "toy:f"], "is not FILE.py:NAME"),
    (["--objective", f"{TOY}:objective", "--limit", "5"], "--limit belong to -t TASK"),
    (["--objective", f"{TOY}:objective", "-t", "bb_wikidata"], "one of -t TASK or --objective"),
    ([], "one of -t TASK or --objective"),
])
def test_bad_objectives_get_one_line_and_exit_2(tmp_path, capsys, extra, message):
    argv = ["search", f"{TOY}:build", *sum((["--module-pattern", p] for p in PATTERNS), []), "--types", "fc1",
            "--rhos", "0.5", "--layers", "0", "-o", str(tmp_path / "run"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1, err


def test_an_objectives_groups_widen_the_test_interval(tmp_path):
    """An objective returning "groups" (here 40 groups of 5 identical rows): the test interval resamples groups, at
    least 1.8 times as wide as the same per-row values counted as independent rows; a bad "groups" is refused."""
    import random

    rng = random.Random(1)
    truth = [(float(rng.random() < 0.4), float(rng.random() < 0.6)) for _ in range(40)]

    def objective(model, split, grouped=True):
        rank = torch.linalg.matrix_rank(model.blocks[1].fc1.weight.detach()).item()
        values = [b if rank == 8 else e for b, e in truth for _ in range(5)]  # rank < 8: the edit's values
        out = {"score": sum(values) / len(values), "per_row": {"score": values}}
        return {**out, "groups": [f"g{i // 5}" for i in range(200)]} if grouped else out

    runs = {}
    for grouped in (True, False):
        runs[grouped] = laserlm.search(toy("build")(), lambda m, s, g=grouped: objective(m, s, g), metric="score",
                                       run_dir=tmp_path / str(grouped), types="fc1", layers=[1],
                                       module_patterns=PATTERNS, rhos=[0.5], progress=False)
    wide, narrow = runs[True]["best"]["test_ci"], runs[False]["best"]["test_ci"]
    assert runs[True]["best"]["test_diff"] == runs[False]["best"]["test_diff"] != 0
    assert (wide[1] - wide[0]) >= 1.8 * (narrow[1] - narrow[0])
    with pytest.raises(laserlm.UserError, match="groups that are not one id per row"):
        laserlm.search(toy("build")(), lambda m, s: {**objective(m, s), "groups": ["a"]}, metric="score",
                       run_dir=tmp_path / "bad", types="fc1", layers=[1], module_patterns=PATTERNS, rhos=[0.5],
                       progress=False)
