"""Quantized storage: a matrix held as packed integers, 8-bit floats with scales, or a quantized tensor subclass is
not the matrix its bytes spell, and an SVD of those bytes would be meaningless. Such a matrix is refused, naming
what to load instead; nothing is dequantized behind the user's back (a dequantized edit would be saved at a
precision the checkpoint never had)."""

from __future__ import annotations

import torch

from ..errors import UserError

_PACKED = ("qweight", "weight_packed", "qzeros", "weight_q", "W_q")  # GPTQ/AWQ/Marlin, compressed-tensors, HQQ


def quantized_storage(module, weight) -> str | None:
    """What kind of quantized storage holds this matrix, or None for a plain float matrix."""
    cls = type(module).__name__
    if any(hasattr(module, name) for name in _PACKED):
        return f"packed integer weights ({cls}: GPTQ, AWQ, HQQ or compressed-tensors)"
    if weight is None:
        return f"no float weight ({cls})"
    wcls = type(weight).__name__
    if wcls in ("Params4bit", "Int8Params") or cls in ("Linear4bit", "Linear8bitLt"):
        return f"bitsandbytes {'4' if '4' in wcls + cls else '8'}-bit weights ({cls})"
    if weight.dtype in (torch.uint8, torch.int8, torch.int32, torch.int16) or not weight.dtype.is_floating_point:
        return f"{str(weight.dtype).removeprefix('torch.')} weights ({cls})"
    if "float8" in str(weight.dtype) or any(hasattr(module, n) for n in ("weight_scale", "weight_scale_inv")):
        return f"FP8 weights with scales ({cls})"
    if type(weight) not in (torch.Tensor, torch.nn.Parameter) and "Quantized" in wcls + type(weight.data).__name__:
        return f"a quantized tensor ({type(weight.data).__name__}, torchao)"
    return None


def refuse_quantized(edit, target) -> None:
    weight = getattr(target.module, target.param, None) if not target.parts else None
    kind = quantized_storage(target.module, weight if isinstance(weight, torch.Tensor) else None)
    if kind is not None and not getattr(target.module, "is_factored", False):
        raise UserError(f"{edit} names {target.name}, stored as {kind}, which is not a float matrix to decompose: "
                        "load the unquantized checkpoint (the base model's own bf16/fp16 weights, without "
                        "quantization_config) and write a quantized file after editing, e.g. laser apply --gguf")
