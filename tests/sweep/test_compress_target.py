"""`laser compress --target`: the allocations meet the size, the val rows choose among them, and the folder keeps
at most the target of the parameters and loads in plain transformers with laserlm's logits."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from laserlm import load_model
from laserlm.cli.main import main

from conftest import WORDS, cloze_rows


def test_compress_to_a_size_target(tiny_with_tokenizer, tmp_path, capsys):
    rows, text = tmp_path / "rows.jsonl", tmp_path / "calib.txt"
    rows.write_text("".join(json.dumps(r) + "\n" for r in cloze_rows(120, seed=4)))
    text.write_text(" ".join(WORDS * 30))
    out = tmp_path / "c"
    argv = ["compress", str(tiny_with_tokenizer), "-t", str(rows), "--metric", "top10", "--target", "0.8",
            "--methods", "whiten,svd,asvd", "--calibration", str(text), "--heldout", str(text), "--layers", "1-2",
            "--no-svd-cache", "-o", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "compress.json").read_text())
    base, comp = summary["base"], summary["compressed"]
    assert comp["parameters"] <= 0.8 * base["parameters"]
    names = {c["name"].split(" + ")[0] for c in summary["candidates"]}
    assert names == {f"{m}/{a}" for m in ("whiten", "svd", "asvd") for a in ("uniform", "loss")}
    for cand in summary["candidates"]:
        assert cand["parameters"] <= 0.8 * base["parameters"]
    chosen = next(c for c in summary["candidates"] if c["name"] == summary["chosen"])
    assert chosen["val"]["top10"] == max(c["val"]["top10"] for c in summary["candidates"])
    # The loss allocation minimises the calibration loss: never above the uniform one of its method.
    by = {c["name"]: c for c in summary["candidates"] if " + " not in c["name"]}
    for m in ("whiten", "svd", "asvd"):
        assert by[f"{m}/loss"]["calibration_loss"] <= by[f"{m}/uniform"]["calibration_loss"] + 1e-12
    assert comp["val_reloaded"] == pytest.approx(comp["val"], abs=1e-5)
    assert comp["heldout_perplexity"] > 0 and "test_ci" in comp
    loaded = load_model(str(out / "model"))
    assert sum(p.numel() for p in {id(p): p for p in loaded.model.parameters()}.values()) == comp["parameters"]
    card = (out / "model" / "README.md").read_text()
    assert "--target 0.8" in card and "| test | top10 |" in card and "trust_remote_code=True" in card
    ids = torch.tensor([[2, 7, 9, 11, 13]])
    with torch.no_grad():
        want = loaded.model(input_ids=ids).logits
    code = ("import sys, torch, transformers as tf; sys.modules['laserlm'] = None; "
            f"m = tf.AutoModelForCausalLM.from_pretrained({str(out / 'model')!r}, trust_remote_code=True).eval(); "
            f"torch.save(m(input_ids=torch.tensor({ids.tolist()})).logits.detach(), {str(tmp_path / 'l.pt')!r})")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    torch.testing.assert_close(torch.load(tmp_path / "l.pt"), want, rtol=1e-5, atol=1e-5)
    first = (out / "search" / "target.jsonl").read_text()
    assert main(argv) == 0  # resumed: no allocation evaluated again
    assert (out / "search" / "target.jsonl").read_text() == first


def test_an_unreachable_target_is_one_line(tiny_with_tokenizer, tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in cloze_rows(40, seed=4)))
    argv = ["compress", str(tiny_with_tokenizer), "-t", str(rows), "--target", "0.2", "--methods", "svd",
            "--layers", "2", "--types", "mlp_out", "--no-svd-cache", "-o", str(tmp_path / "c")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reduce more matrix types or layers" in err[0]
    argv[argv.index("--methods") + 1] = "cluster2"
    assert main(argv) == 2
    assert "not cluster2" in capsys.readouterr().err
