"""GGUF out from an HF model (llama, mistral, qwen2, qwen3): a complete file that llama.cpp runs.

The tensor names come from the gguf package's own tables, the hyperparameters from the config, the tokenizer from
the model's saved tokenizer (models/gguf_vocab.py). What llama.cpp expects differently from transformers is done as
its converter does: llama-family q/k rows permuted to its rope layout, tied output heads left out, Llama-3 rope
scaling written as a `rope_freqs` tensor. Anything else (another architecture, rope scaling llama.cpp would read
differently) is refused in one line rather than written wrong. Dense only: llama.cpp has no low-rank layers.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .gguf_out import _gguf, _llama_permute, quantize, temp_beside
from .gguf_vocab import add_tokenizer

ARCHS = {"llama": "LLAMA", "mistral": "LLAMA", "qwen2": "QWEN2", "qwen3": "QWEN3"}
FILE_TYPES = {"F32": "ALL_F32", "F16": "MOSTLY_F16", "BF16": "MOSTLY_BF16", "Q8_0": "MOSTLY_Q8_0",
              "Q4_0": "MOSTLY_Q4_0", "Q4_1": "MOSTLY_Q4_1", "Q5_0": "MOSTLY_Q5_0", "Q5_1": "MOSTLY_Q5_1"}
SOURCE_TYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def _rope(config) -> dict:
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    return params


def _llama3_factors(rope: dict, head_dim: int) -> np.ndarray:
    """Per-frequency divisors of Llama-3's rope scaling (transformers' `_compute_llama3_parameters`)."""
    base, factor = float(rope["rope_theta"]), float(rope["factor"])
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old = float(rope.get("original_max_position_embeddings", 8192))
    out = []
    for freq in 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim):
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def _hparams(writer, config, arch: str, gguf) -> np.ndarray | None:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(heads))
    writer.add_head_count_kv(int(getattr(config, "num_key_value_heads", None) or heads))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_key_length(int(head_dim))
    writer.add_value_length(int(head_dim))
    writer.add_vocab_size(int(config.vocab_size))
    rope = _rope(config)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    if arch == "LLAMA":
        writer.add_rope_dimension_count(int(head_dim))
    kind = rope["rope_type"]
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
    elif kind == "llama3":
        return _llama3_factors(rope, int(head_dim))
    elif kind != "default":
        raise UserError(f"GGUF out: rope scaling {kind!r} is not one laserlm writes (default, linear, yarn, llama3)")
    return None


def _tensor_type(name: str, shape: tuple, want: str, notes: list) -> str:
    """Norms, biases and other vectors stay F32, as llama.cpp's converter keeps them; a matrix whose rows do not
    split into the quant's blocks falls back to F16 (said once)."""
    if len(shape) < 2:
        return "F32"
    if want.startswith("Q") and shape[-1] % 32:
        note = f"{name}: rows of {shape[-1]} do not split into {want} blocks of 32: written as F16"
        notes.append(note)
        return "F16"
    return want


def _tensor_plan(model, edited: dict, table, tied: bool, permute: bool) -> list[tuple[str, tuple, object]]:
    """(GGUF name, shape, a function giving the float32 array as llama.cpp lays it out) for every tensor."""
    config = model.config
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    plan = []
    for name, tensor in model.state_dict().items():
        module = name.rsplit(".", 1)[0]
        if name == "lm_head.weight" and tied:
            continue
        gname = table.get_name(name, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise UserError(f"GGUF out: {name} has no tensor in gguf's name table for {config.model_type} (a "
                            "factorized or otherwise modified module?): not written")
        w = edited[module] if module in edited and name.endswith(".weight") else tensor
        rows = heads if module.endswith("self_attn.q_proj") else kv_heads
        turn = permute and module.endswith(("self_attn.q_proj", "self_attn.k_proj"))

        def get(w=w, turn=turn, rows=rows):
            array = w.detach().float().cpu().numpy()
            return _llama_permute(array, rows) if turn else array

        plan.append((gname, tuple(w.shape), get))
    return plan


def check_writable(model, tokenizer) -> str:
    """The model's family, or a one-line refusal (before anything is computed)."""
    kind = getattr(model.config, "model_type", None)
    if kind not in ARCHS:
        raise UserError(f"GGUF out from an HF model: {kind!r} is not one laserlm writes "
                        f"({', '.join(sorted(ARCHS))}); write the folder with -o and convert it with llama.cpp's "
                        "convert_hf_to_gguf.py")
    if tokenizer is None:
        raise UserError("GGUF out: the model has no tokenizer, and llama.cpp needs one in the file")
    return kind


def write_gguf_hf(model, tokenizer, out: Path, edited: dict[str, torch.Tensor], quant: str, source_dtype,
                  log=print) -> dict:
    """Write `model` (edited matrices in `edited`, {module name: dense matrix}) as a GGUF file at `out`."""
    gguf = _gguf()
    config = model.config
    kind = check_writable(model, tokenizer)
    want = SOURCE_TYPES.get(source_dtype or torch.float32, "F32") if quant == "same" else quant
    arch = getattr(gguf.MODEL_ARCH, ARCHS[kind])
    blocks = int(config.num_hidden_layers)
    table = gguf.get_tensor_name_map(arch, blocks)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    tmp = temp_beside(out)
    notes: list[str] = []
    try:
        writer = gguf.GGUFWriter(tmp, arch=gguf.MODEL_ARCH_NAMES[arch])
        # Not the bare family name: transformers' GGUF reader takes a file named exactly "mistral" for its own arch.
        writer.add_name(str(getattr(config, "_name_or_path", "") or "").rstrip("/").split("/")[-1] or "model")
        rope_freqs = _hparams(writer, config, ARCHS[kind], gguf)
        with tempfile.TemporaryDirectory() as saved:
            tokenizer.save_pretrained(saved)
            vocab = add_tokenizer(writer, Path(saved), int(config.vocab_size))
        writer.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[want]))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        plan = _tensor_plan(model, edited, table, tied, ARCHS[kind] == "LLAMA")
        if rope_freqs is not None:
            plan.insert(0, (gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", rope_freqs.shape,
                            lambda: rope_freqs))
        # Shapes first, data after, one tensor at a time: memory stays at one converted tensor, not a model's worth.
        kinds = []
        for gname, shape, _ in plan:
            qtype = gguf.GGMLQuantizationType[_tensor_type(gname, shape, want, notes)]
            byte_shape = gguf.quant_shape_to_byte_shape(shape, qtype) if qtype.name.startswith(("Q", "BF")) else shape
            dtype = {"F32": np.float32, "F16": np.float16}.get(qtype.name, np.uint8)
            writer.add_tensor_info(gname, byte_shape, np.dtype(dtype), int(np.prod(byte_shape)) * np.dtype(dtype).itemsize,
                                   raw_dtype=qtype)
            kinds.append(qtype.name)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for (_, _, get), kind_name in zip(plan, kinds):
            writer.write_tensor_data(quantize(get(), kind_name))
        writer.close()
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if len(notes) > 3:
        notes = notes[:3] + [f"... and {len(notes) - 3} more tensors written as F16"]
    for note in notes:
        log(f"laser: {note}")
    return {"tensors": len(plan), "type": want, "tokenizer": vocab, "edited": len(edited), "notes": notes}
