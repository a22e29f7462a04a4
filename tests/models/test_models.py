"""Model loading: local folders, .gguf files (the demo model is a real one), identities."""

from __future__ import annotations

import pytest
import torch

from laserlm import UserError, get_layout, load_model
from laserlm.models.loading import demo_path

from conftest import needs_demo


@pytest.mark.parametrize("arch", ["llama", "roberta", "vit"])
def test_folder_loads_with_the_right_head(tiny_folder, arch):
    loaded = load_model(str(tiny_folder))
    expected = {"llama": "LlamaForCausalLM", "roberta": "RobertaForMaskedLM", "vit": "ViTForImageClassification"}[arch]
    assert type(loaded.model).__name__ == expected
    assert loaded.kind == "folder" and loaded.tokenizer is None
    assert load_model(str(tiny_folder)).identity == loaded.identity


@pytest.mark.parametrize("arch", ["llama"])
def test_dtype_is_kept(tiny_folder, arch):
    model = load_model(str(tiny_folder), dtype="bfloat16").model
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(UserError, match="unknown dtype .float8.: use auto"):
        load_model(str(tiny_folder), dtype="float8")


@needs_demo
def test_demo_gguf_loads_through_the_conversion_cache():
    """The demo is a real Q4_1 GGUF file; our cached HF folder must match transformers' own GGUF load."""
    from transformers import AutoModelForCausalLM

    loaded = load_model("demo", device="cpu")
    layout = get_layout(loaded.model)
    assert layout.n_layers == 30 and layout.source == "table"
    assert layout.target("mlp_in", 29).shape == (1536, 576)
    ids = loaded.tokenizer("The capital of France is", return_tensors="pt")
    path = demo_path()
    direct = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    with torch.inference_mode():
        ours, theirs = loaded.model(**ids).logits, direct(**ids).logits
    assert torch.equal(ours, theirs)
    assert loaded.tokenizer.decode(ours[0, -1].argmax()) == " Paris"
    again = load_model("demo", device="cpu")
    assert again.identity == loaded.identity and again.identity["kind"] == "demo"


def test_a_python_factory_is_a_model(tmp_path):
    """MODEL as FILE.py:FACTORY: any torch module, with an identity that follows the file and the weights."""
    path = tmp_path / "net.py"
    path.write_text("import torch\n\ndef build():\n    torch.manual_seed(0)\n    return torch.nn.Sequential("
                    "torch.nn.Linear(4, 8), torch.nn.Linear(8, 4))\n\ndef not_a_model():\n    return 3\n")
    loaded = load_model(f"{path}:build", device="cpu")
    assert loaded.kind == "python" and isinstance(loaded.model[0], torch.nn.Linear)
    assert load_model(f"{path}:build", device="cpu").identity == loaded.identity
    assert load_model(f"{path}:build", device="cpu", dtype="bfloat16").model[0].weight.dtype == torch.bfloat16
    with pytest.raises(UserError, match="returned int, not a torch.nn.Module"):
        load_model(f"{path}:not_a_model", device="cpu")
