"""The `laser` command: info, apply, and one clear line with exit code 2 for every bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import transformers as tf

from laserlm.cli.main import main

from conftest import tiny_inputs


@pytest.mark.parametrize("arch", ["llama", "gpt2", "vit"])
def test_info(tiny_folder, tmp_path, capsys, arch):
    out = tmp_path / "info.json"
    assert main(["info", str(tiny_folder), "--json", str(out)]) == 0
    info = json.loads(out.read_text())
    assert info["layers"] == 3 and info["model_type"] == arch
    mlp_in = next(t for t in info["types"] if t["type"] == "mlp_in")
    assert mlp_in["shape"] == ([128, 32] if arch == "gpt2" else [64, 32])
    assert mlp_in["params_all_layers"] == 3 * mlp_in["params_per_matrix"]
    assert "mlp_out" in capsys.readouterr().out


@pytest.mark.parametrize("arch", ["llama"])
def test_apply_writes_a_loadable_folder(tiny_folder, tmp_path, capsys, arch):
    out = tmp_path / "edited"
    code = main(["apply", str(tiny_folder), "-e", "mlp_in:2:k=3", "-e", "zero/attn_o:0", "-o", str(out)])
    assert code == 0
    model = tf.AutoModelForCausalLM.from_pretrained(out)
    w = model.model.layers[2].mlp.gate_proj.weight.detach()
    assert torch.linalg.matrix_rank(w).item() == 3
    assert not model.model.layers[0].self_attn.o_proj.weight.any()
    recipe = json.loads((out / "laser_recipe.json").read_text())
    assert recipe["edits"] == [
        {"method": "svd", "type": "mlp_in", "layer": 2, "amount": "k=3"},
        {"method": "zero", "type": "attn_o", "layer": 0, "amount": None},
    ]
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("arch", ["gpt2"])
@pytest.mark.parametrize("argv,fragment", [
    (["-e", "attn_q:0:0.1"], "unknown matrix type 'attn_q' for gpt2"),
    (["-e", "mlp_in:9:0.1"], "layer 9 is out of range"),
    (["-e", "mlp_in:0:1.5"], "outside (0, 1]"),
    (["-e", "mlp_in::0.1"], "malformed edit"),
    (["-e", "mlp_in:0:0.1", "-e", "mlp:0:0.5"], "both change"),
    ([], "laser apply needs MODEL and -e EDIT, or --from RUN_DIR"),
])
def test_apply_bad_input_is_one_line_and_exit_2(tiny_folder, tmp_path, capsys, argv, fragment, arch):
    code = main(["apply", str(tiny_folder), *argv, "-o", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2
    assert fragment in err
    assert err.count("\n") == 1 and err.startswith("laser: error:")
    assert not (tmp_path / "x").exists()


def test_missing_model_path(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope" / "model")]) == 2
    assert "no such model folder or file" in capsys.readouterr().err
    assert main(["info", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "missing.gguf")]) == 2
    assert "no such GGUF file" in capsys.readouterr().err


def test_unreachable_hub_id_is_a_user_error(capsys):
    assert main(["info", "no-such-org/no-such-model-xyz"]) == 2
    err = capsys.readouterr().err
    assert "cannot load model 'no-such-org/no-such-model-xyz'" in err and err.count("\n") == 1


@pytest.mark.parametrize("arch", ["llama"])
def test_no_traceback_from_the_real_command(tiny_folder, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "laserlm", "apply", str(tiny_folder), "-e", "mlp_in:0:2",
                           "-o", str(tmp_path / "o"), "--device", "cpu"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == "laser: error: amount '2' in edit 'mlp_in:0:2' is outside (0, 1]: rho is the fraction of " \
                          "rank kept\n"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("arch", ["gpt2"])
def test_module_pattern_addresses_any_module(tiny_folder, tmp_path, arch):
    out = tmp_path / "o"
    code = main(["apply", str(tiny_folder), "--module-pattern", "fc=transformer.h.{layer}.mlp.c_fc",
                 "-e", "fc:1:k=2", "-o", str(out)])
    assert code == 0
    model = tf.AutoModelForCausalLM.from_pretrained(out)
    assert torch.linalg.matrix_rank(model.transformer.h[1].mlp.c_fc.weight.detach()).item() == 2
    model(tiny_inputs())
