"""Options that were only ever tested for rejection, now checked for what they do."""

from __future__ import annotations

import json

import torch
from safetensors import safe_open

from laserlm.cli.main import main

from conftest import cloze_rows


def test_test_limit_caps_the_test_rows(tiny_with_tokenizer, task_file, tmp_path):
    out = tmp_path / "run"
    assert main(["search", str(tiny_with_tokenizer), "-t", str(task_file), "--layers", "2", "--rhos", "0.5",
                 "--limit", "20", "--test-limit", "7", "--no-svd-cache", "--device", "cpu", "-o", str(out)]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["val_rows"]["n"] == 20 and run["test_rows"]["n"] == 7
    tests = [json.loads(line) for line in (out / "test.jsonl").read_text().splitlines()]
    assert tests and all(r["n"] == 7 and len(r["per_row"]["top1"]) == 7 for r in tests)


def test_svd_authors_through_the_cli_is_their_seeded_svd_lowrank(tiny_with_tokenizer, tmp_path):
    out = tmp_path / "authors"
    assert main(["apply", str(tiny_with_tokenizer), "-e", "mlp_in:1:0.5", "--svd", "authors", "--seed", "3",
                 "--save-dtype", "float32", "--device", "cpu", "-o", str(out)]) == 0
    from laserlm import load_model

    w = load_model(str(tiny_with_tokenizer), device="cpu").model.model.layers[1].mlp.gate_proj.weight.detach()
    k = json.loads((out / "laser_recipe.json").read_text())["ranks"]["model.layers.1.mlp.gate_proj"]
    assert k == int(32 * ((10 - 5.0) * 0.1)) == 16  # their rule for rho 0.5 (rate 5) of a 64 x 32 matrix
    with torch.random.fork_rng():
        torch.manual_seed(3)
        U, S, V = torch.svd_lowrank(w.float(), q=k, niter=2)
    theirs = U @ torch.diag(S) @ V.T
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        saved = f.get_tensor("model.layers.1.mlp.gate_proj.weight")
    torch.testing.assert_close(saved, theirs, atol=1e-5, rtol=1e-5)
    U, S, Vh = torch.linalg.svd(w, full_matrices=False)
    assert (saved - U[:, :k] @ torch.diag(S[:k]) @ Vh[:k]).abs().max() > 1e-3  # not the exact truncation


def test_protocol_laserlm_splits_by_seed_not_by_file_order(tiny_with_tokenizer, tmp_path):
    from laserlm.evaluation.tasks import load_task

    preds = tmp_path / "p.jsonl"
    assert main(["eval", str(tiny_with_tokenizer), "-t", "bb_epistemic", "--protocol", "laserlm", "--split", "val",
                 "--limit", "3", "--predictions", str(preds), "--device", "cpu"]) == 0
    first = json.loads(preds.read_text().splitlines()[0])
    ours = load_task("bb_epistemic", protocol="laserlm").select("val", 0, 3)
    paper = load_task("bb_epistemic").select("val", 0, 3)
    assert first["prompt"] == ours[0].prompt != paper[0].prompt


def test_a_tolerance_admits_a_stack_that_zero_rejects(tiny_with_tokenizer, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in cloze_rows(150, seed=5)))
    stacks = {}
    for tol in ("0", "2"):
        out = tmp_path / f"c{tol}"
        assert main(["compress", str(tiny_with_tokenizer), "-t", str(rows), "--metric", "logloss", "--rhos", "k=1",
                     "--tolerance", tol, "--no-svd-cache", "--device", "cpu", "-o", str(out)]) == 0
        stacks[tol] = json.loads((out / "compress.json").read_text())
    # Two nats of log-loss admit every reduction; zero admits only those that lose nothing.
    assert len(stacks["2"]["stack"]) > len(stacks["0"]["stack"])
    assert stacks["2"]["compressed"]["parameters"] < stacks["0"]["compressed"]["parameters"]
    base = stacks["0"]["base"]["val"]["logloss"]
    assert stacks["0"]["compressed"]["val"]["logloss"] <= base < stacks["2"]["compressed"]["val"]["logloss"] <= base + 2
