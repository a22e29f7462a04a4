"""A factorized folder loads in plain transformers, without laserlm, through the modeling code written into it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from laserlm import load_model
from laserlm.evaluation.calibration import calibrate
from laserlm.models.export import export
from laserlm.models.loading import Loaded

from conftest import MLM, VISION, build_tiny, tiny_batch, tiny_tokenizer, WORDS

# svd factors, a clustered reduction and a bias-carrying architecture (gpt2's Conv1D, bert's biased Linear)
EDITS = ["mlp:0-1:0.1", "attn_o:1:k=2", "cluster2/mlp_out:2:0.2"]

_CHILD = """
import sys, torch, transformers as tf
sys.modules["laserlm"] = None  # laserlm cannot be imported here
io = torch.load(sys.argv[1])
cls = getattr(tf, sys.argv[3])
model = cls.from_pretrained(sys.argv[2], trust_remote_code=True, dtype=getattr(torch, sys.argv[4])).eval()
with torch.no_grad():
    logits = model(**io["x"]).logits
torch.save({"logits": logits, "class": type(model).__name__,
            "modules": sorted(type(m).__name__ for m in model.modules() if type(m).__name__.startswith("LaserLow") or type(m).__name__.startswith("LaserClu"))},
           sys.argv[1] + ".out")
"""


def _plain_class(arch: str) -> str:
    return ("AutoModelForMaskedLM" if arch in MLM else "AutoModelForImageClassification" if arch in VISION
            else "AutoModelForCausalLM")


def _load_without_laserlm(tmp_path, folder, x, arch, dtype="float32") -> dict:
    io = tmp_path / "io.pt"
    torch.save({"x": x}, io)
    r = subprocess.run([sys.executable, "-c", _CHILD, str(io), str(folder), _plain_class(arch), dtype],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return torch.load(str(io) + ".out")


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert", "vit", "gemma3_text"])
def test_factorized_folder_loads_in_plain_transformers(tmp_path, arch):
    folder = tmp_path / "fact"
    recipe = export(Loaded(build_tiny(arch), None, "tiny", "folder"), EDITS, folder, factorized=True)
    config = json.loads((folder / "config.json").read_text())
    assert set(config["auto_map"].values()) == {"laser_modeling.LaserFactorizedModel"}
    assert config["laser_factorized"] == recipe["factorized"]
    assert "import laserlm" not in (folder / "laser_modeling.py").read_text()
    x = tiny_batch(arch)
    with torch.no_grad():
        want = load_model(str(folder)).model(**x).logits
    got = _load_without_laserlm(tmp_path, folder, x, arch)
    assert got["class"] == "LaserFactorizedModel"
    assert len(got["modules"]) == len(recipe["factorized"])
    assert "LaserClusteredLowRank" in got["modules"]
    torch.testing.assert_close(got["logits"], want, rtol=1e-5, atol=1e-5)


def test_remote_code_in_bfloat16_and_whitened_factors(tmp_path):
    """whiten/ factors exported and read back by plain transformers, in bfloat16 as a user would load them."""
    folder, text = tmp_path / "white", tmp_path / "calib.txt"
    text.write_text(" ".join(WORDS * 40))
    model, tok = build_tiny("llama"), tiny_tokenizer()
    edits = ["whiten/mlp:all:0.25", "asvd/attn_q:0:0.25"]
    calibrate(model, tok, edits, source=str(text), disk=False, quiet=True)
    recipe = export(Loaded(model, tok, "tiny", "folder"), edits, folder, factorized=True,
                    save_dtype=torch.bfloat16)
    assert len(recipe["factorized"]) == 3 * 3 + 1
    x = tiny_batch("llama")
    with torch.no_grad():
        want = load_model(str(folder), dtype="bfloat16").model(**x).logits
    got = _load_without_laserlm(tmp_path, folder, x, "llama", "bfloat16")
    assert got["logits"].dtype == torch.bfloat16
    torch.testing.assert_close(got["logits"], want, rtol=0, atol=0)


def test_dense_folders_stay_plain(tmp_path):
    folder = tmp_path / "dense"
    export(Loaded(build_tiny("llama"), None, "tiny", "folder"), EDITS, folder)
    assert "auto_map" not in json.loads((folder / "config.json").read_text())
    assert not (folder / "laser_modeling.py").exists()
    card = (folder / "README.md").read_text()
    assert "A dense folder" in card and "| `mlp_in:0:0.1` |" in card
