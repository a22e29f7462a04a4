"""The examples' quick pipelines end to end (ViT on digits, decision transformer on Sokoban), resumed after a kill,
the CLI on a trained ViT folder, and the CIFAR-10/SVHN readers on tiny files in the official formats."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from laserlm.cli.main import main
from laserlm.models.python import load_attr

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example(name: str):
    return load_attr(f"{EXAMPLES / name}.py:main", "test").__globals__


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vit") / "quick"
    assert example("vit_classifier")["main"](["--quick", "-o", str(out)]) == 0
    return out


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_vit_quick_pipeline_trains_searches_and_resumes(vit_run):
    summary = json.loads((vit_run / "summary.json").read_text())
    rows = _rows(vit_run / "search" / "results.jsonl")
    assert len(rows) == 1 + 2 * 2 * 2  # base + (mlp_in, mlp_out) x 2 layers x 2 rhos
    assert summary["best"]["val"] == max(r["metrics"]["acc"] for r in rows if r["edits"])
    assert summary["base"]["val"] == next(r["metrics"]["acc"] for r in rows if not r["edits"])
    assert all(r["n"] == 100 for r in rows)
    assert (vit_run / "model" / "config.json").is_file() and not (vit_run / "train_ckpt.pt").exists()
    train = json.loads((vit_run / "train.json").read_text())
    assert example("vit_classifier")["main"](["--quick", "-o", str(vit_run)]) == 0  # nothing is redone
    assert json.loads((vit_run / "train.json").read_text()) == train
    assert len(_rows(vit_run / "search" / "results.jsonl")) == len(rows)


def test_laser_search_cli_on_the_trained_vit_folder(vit_run, tmp_path):
    out = tmp_path / "cli"
    argv = ["search", str(vit_run / "model"), "--objective", f"{EXAMPLES / 'vit_classifier.py'}:objective",
            "--types", "mlp_out", "--layers", "1", "--rhos", "0.5,k=1", "-o", str(out)]
    assert main(argv) == 0
    best = json.loads((out / "best.json").read_text())
    assert best["metric"] == "acc" and best["base"]["val_metrics"]["loss"] > 0
    rows = _rows(out / "results.jsonl")
    assert len(rows) == 3 and all(r["n"] == 359 for r in rows)  # digits val: 20% of 1,797


def test_decision_transformer_quick_pipeline_and_resume(tmp_path):
    out = tmp_path / "dt"
    assert example("decision_transformer")["main"](["--quick", "-o", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = _rows(out / "search" / "results.jsonl")
    assert len(rows) == 1 + 2 * 2 * 2
    singles = [r for r in rows if r["edits"]]
    best = max(singles, key=lambda r: (r["metrics"]["solved"], r["metrics"]["return"]))
    assert summary["best"]["val_solved"] == best["metrics"]["solved"]  # solved first, ties on the return
    assert summary["best"]["val_return"] == best["metrics"]["return"]
    assert all(0 <= r["metrics"]["solved"] <= 1 and r["n"] == 8 for r in rows)
    assert summary["target_return"] == pytest.approx(1 + 10 - 0.1 * summary["shortest_training_episode"])
    best_json = json.loads((out / "search" / "best.json").read_text())
    assert best_json["metric"] == "solved" and "test_ci" in best_json["best"]
    assert set(best_json["best"]["test_paired"]) == {"solved", "return"}
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "levels").iterdir()}
    assert example("decision_transformer")["main"](["--quick", "-o", str(out)]) == 0  # nothing is redone
    assert {p.name: p.stat().st_mtime_ns for p in (out / "levels").iterdir()} == stamps
    assert len(_rows(out / "search" / "results.jsonl")) == len(rows)
    assert json.loads((out / "summary.json").read_text())["train"] == summary["train"]


def test_decision_transformer_training_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """Killed after the checkpoint at step 500, training resumes there and ends with the same weights as a run
    that was never stopped."""
    ns = example("decision_transformer")
    data = ns["episodes"](ns["levels"](tmp_path / "levels", range(100_000, 100_030), 1, True, workers=1))
    whole, _ = ns["train"](tmp_path / "whole", data, 600, True)
    calls = {"n": 0}
    real = ns["_forward"]

    def dying(*a):
        calls["n"] += 1
        if calls["n"] == 550:
            raise KeyboardInterrupt  # a kill between checkpoints
        return real(*a)

    monkeypatch.setitem(ns, "_forward", dying)
    with pytest.raises(KeyboardInterrupt):
        ns["train"](tmp_path / "killed", data, 600, True)
    assert (tmp_path / "killed" / "train_ckpt.pt").is_file()
    calls["n"] = 0
    monkeypatch.setitem(ns, "_forward", lambda *a: (calls.__setitem__("n", calls["n"] + 1), real(*a))[1])
    resumed, info = ns["train"](tmp_path / "killed", data, 600, True)
    assert calls["n"] == 100  # steps 501-600 only
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def _cifar(root: Path, n: int = 4) -> np.ndarray:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (6, n, 3072), dtype=np.uint8)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        (base / name).write_bytes(pickle.dumps({"data": data[i], "labels": [(i + j) % 10 for j in range(n)]}))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(k) for k in range(10)]}))
    return data


def test_cifar10_and_svhn_read_from_their_official_files(tmp_path, monkeypatch):
    from scipy.io import savemat

    ns = example("vit_classifier")
    data = _cifar(tmp_path)
    d = ns["load_data"]("cifar10", str(tmp_path))
    assert d["train"][0].shape == (18, 3, 32, 32) and len(d["val"][1]) == 2 and d["test"][0].shape == (4, 3, 32, 32)
    # test row 2, channel 1 (green), pixel (h=3, w=5): byte 1024 + 3 * 32 + 5 of the row
    assert d["test"][0][2, 1, 3, 5].item() == pytest.approx((data[5, 2, 1024 + 3 * 32 + 5] / 255 - 0.5) / 0.5)
    assert d["test"][1].tolist() == [5, 6, 7, 8]
    x = np.random.default_rng(1).integers(0, 256, (32, 32, 3, 6), dtype=np.uint8)
    for split in ("train", "test"):
        savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": np.array([[10], [1], [2], [3], [4], [10]])})
    d = ns["load_data"]("svhn", str(tmp_path))
    assert d["test"][1].tolist() == [0, 1, 2, 3, 4, 0]  # SVHN's label 10 is the digit 0
    assert d["test"][0][4, 2, 7, 9].item() == pytest.approx((x[7, 9, 2, 4] / 255 - 0.5) / 0.5)
    with pytest.raises(SystemExit, match="no readable cifar10 under --data-dir"):
        ns["load_data"]("cifar10", str(tmp_path / "empty"))
