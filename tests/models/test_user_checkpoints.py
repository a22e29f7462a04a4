"""The user's checkpoint as it is: its dtype kept on save, quantized storage refused, chat templates, identities
that follow every byte of the weights, and result keys that change with the code."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from laserlm import UserError, get_layout, load_model
from laserlm.core.edits import edited, plan

from conftest import build_tiny, tiny_tokenizer


def _laser(*argv):
    return subprocess.run([sys.executable, "-m", "laserlm", *argv, "--device", "cpu"], capture_output=True, text=True,
                          timeout=300)


def test_a_bf16_checkpoint_applied_with_defaults_writes_bf16(tmp_path):
    src, out = tmp_path / "bf16", tmp_path / "out"
    build_tiny("llama").to(torch.bfloat16).save_pretrained(src)
    loaded = load_model(str(src), device="cpu")
    assert next(loaded.model.parameters()).dtype == torch.float32  # auto: float32 computation on the CPU
    assert loaded.source_dtype == torch.bfloat16
    done = _laser("apply", str(src), "-e", "mlp_in:1:k=2", "-o", str(out))
    assert done.returncode == 0, done.stderr
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
        edited_w = f.get_tensor("model.layers.1.mlp.gate_proj.weight")
    assert dtypes == {torch.bfloat16}
    assert torch.linalg.matrix_rank(edited_w.float(), rtol=2e-2).item() == 2  # rank 2 up to bf16 rounding
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert "bfloat16" in done.stdout
    out32 = tmp_path / "out32"
    assert _laser("apply", str(src), "-e", "mlp_in:1:k=2", "-o", str(out32), "--save-dtype", "float32").returncode == 0
    with safe_open(str(out32 / "model.safetensors"), "pt") as f:
        assert f.get_tensor("model.layers.1.mlp.gate_proj.weight").dtype == torch.float32


def test_dtype_auto_on_a_gpu_would_keep_the_checkpoints(monkeypatch):
    from laserlm.models.loading import load_dtype

    assert load_dtype("auto", "cuda", torch.bfloat16) == torch.bfloat16
    assert load_dtype("auto", "map", torch.float16) == torch.float16
    assert load_dtype("auto", "cpu", torch.bfloat16) == torch.float32
    assert load_dtype("auto", "cuda", None) == torch.float32
    assert load_dtype("bfloat16", "cpu", torch.float32) == torch.bfloat16


class _Packed(torch.nn.Module):
    """GPTQ/AWQ-style: packed int32 weights, no float `weight`."""

    def __init__(self, i, o):
        super().__init__()
        self.in_features, self.out_features = i, o
        self.register_buffer("qweight", torch.zeros(i // 8, o, dtype=torch.int32))
        self.register_buffer("scales", torch.ones(1, o))


class Linear8bitLt(torch.nn.Linear):  # the bitsandbytes class name, int8 storage
    def __init__(self, i, o):
        super().__init__(i, o, bias=False)
        self.weight = torch.nn.Parameter(torch.zeros(o, i, dtype=torch.int8), requires_grad=False)


class Params4bit(torch.nn.Parameter):  # bitsandbytes' 4-bit storage: packed uint8, two weights a byte
    pass


class Linear4bit(torch.nn.Linear):
    def __init__(self, i, o):
        super().__init__(i, o, bias=False)
        self.weight = Params4bit(torch.zeros(o * i // 2, 1, dtype=torch.uint8), requires_grad=False)


class _FP8(torch.nn.Linear):
    def __init__(self, i, o):
        super().__init__(i, o, bias=False)
        self.weight = torch.nn.Parameter(torch.zeros(o, i).to(torch.float8_e4m3fn), requires_grad=False)
        self.register_buffer("weight_scale_inv", torch.ones(1))


@pytest.mark.parametrize("make,kind", [(_Packed, "packed integer"), (Linear8bitLt, "bitsandbytes 8-bit"),
                                       (Linear4bit, "bitsandbytes 4-bit"), (_FP8, "FP8")])
def test_quantized_storage_is_refused_with_what_to_load(make, kind):
    model = build_tiny("qwen2")
    mlp = model.model.layers[1].mlp
    mlp.gate_proj = make(mlp.gate_proj.in_features, mlp.gate_proj.out_features)
    layout = get_layout(model)
    with pytest.raises(UserError, match=f"stored as {kind}.*load the unquantized checkpoint"):
        plan(model, ["mlp_in:1:0.5"], layout)
    plan(model, ["mlp_in:0:0.5"], layout)  # a float layer beside it is fine


CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_chat_template_renders_the_user_turn_and_scores_the_answer_after_the_header():
    from laserlm.evaluation.chat import chat_examples
    from laserlm.evaluation.evaluate import build_requests
    from laserlm.evaluation.scoring import Scorer
    from laserlm.evaluation.tasks import Example

    tok = tiny_tokenizer()
    with pytest.raises(UserError, match="has no chat template"):
        chat_examples(tok, [Example("the cat", answers=["sat"])])
    tok.chat_template = CHAT_TEMPLATE
    rows = chat_examples(tok, [Example("the cat", answers=["sat on"]),
                               Example("what is it", choices=[" red", " blue"], label=1)])
    assert rows[0].prompt == "<|user|>the cat<|end|><|assistant|>"
    assert rows[1].choices == ["red", "blue"] and rows[1].label == 1
    scorer = Scorer(build_tiny("llama"), tok)
    requests, enc = build_requests(scorer, rows[:1], False)
    # The answer follows the header with no space: its ids are those of "sat on" encoded on its own.
    assert enc[0][0] == tok("sat on", add_special_tokens=False)["input_ids"]
    whole = tok("<|user|>the cat<|end|><|assistant|>sat on")["input_ids"]
    assert requests[0].ids == whole[:-1] and [t for _, t in requests[0].targets] == enc[0][0]


def test_changed_weights_change_the_identity_even_in_the_middle(tmp_path, task_file):
    folder = tmp_path / "m"
    import transformers as tf

    from conftest import _DECODER

    config = tf.LlamaConfig(**{**_DECODER, "vocab_size": 12000})  # a file over 2 MiB
    tf.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    first = load_model(str(folder), device="cpu").identity
    run = tmp_path / "run"
    argv = ["search", str(folder), "-t", str(task_file), "--layers", "2", "--rhos", "0.5", "--limit", "10", "-o", str(run)]
    assert _laser(*argv).returncode == 0
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    assert len(data) > 3 << 20
    middle = len(data) // 2
    data[middle:middle + 4] = bytes(255 - b for b in data[middle:middle + 4])  # one float in the middle
    path.write_bytes(bytes(data))
    assert load_model(str(folder), device="cpu").identity != first
    done = _laser(*argv)  # the same folder, other weights: the run folder's results are not this model's
    assert done.returncode == 2 and "holds a run for another model" in done.stderr


def test_a_rerun_after_an_upgrade_is_refused_not_mixed(tmp_path, task_file):
    folder = tmp_path / "tiny"
    build_tiny("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    run = tmp_path / "run"
    argv = ["search", str(folder), "-t", str(task_file), "--layers", "2", "--rhos", "0.5", "--limit", "20", "-o", str(run)]
    assert _laser(*argv).returncode == 0
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["versions"]["transformers"]
    manifest["versions"]["transformers"] = "0.0.1"  # as if written by another release
    (run / "run.json").write_text(json.dumps(manifest))
    done = _laser(*argv)
    assert done.returncode == 2 and "versions" in done.stderr and "Traceback" not in done.stderr


def test_the_svd_cache_is_bounded_by_default(tmp_path):
    from laserlm.core.svd import DISK_DEFAULT, SVDCache, default_disk_bound

    assert SVDCache(disk=tmp_path / "svd").disk_max_bytes == default_disk_bound(tmp_path / "svd")
    assert 0 < default_disk_bound(tmp_path) <= DISK_DEFAULT == 20 << 30
    assert SVDCache(disk=tmp_path, disk_max_bytes=5).disk_max_bytes == 5


def test_head_rows_shrink_with_the_vocabulary():
    from laserlm.evaluation.scoring import head_rows

    big = torch.nn.Module()
    big.get_output_embeddings = lambda: torch.nn.Linear(4, 151936, bias=False, device="meta")
    assert head_rows(big) == (256 << 20) // (8 * 151936) == 220
    with edited(build_tiny("llama"), []):
        pass
