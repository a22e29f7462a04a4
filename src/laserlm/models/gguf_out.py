"""GGUF out: an edited model written back as the GGUF file it came from, for llama.cpp, Ollama and LM Studio.

Only the edited tensors change. Each is requantized (to its own type where the `gguf` package can quantize it,
else to the nearest type it can); when every edited tensor keeps its type, and so its size, the source file is
copied and those tensors' bytes overwritten in place, so the metadata and every other tensor stay byte-identical.
Otherwise the file is rewritten with gguf's writer, metadata fields and untouched tensor bytes copied as they are.
llama.cpp has no low-rank layers: what is written is dense.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError

QUANTS = ("same", "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
# What a type gguf cannot quantize becomes: the legacy type of about the same bits per weight.
NEAREST = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q4_1", "Q5_K": "Q5_1", "Q6_K": "Q8_0", "Q8_K": "Q8_0",
           "IQ4_NL": "Q4_0", "IQ4_XS": "Q4_0", "TQ1_0": "Q4_0", "TQ2_0": "Q4_0", "MXFP4": "Q4_0"}


def _gguf():
    try:
        import gguf
    except ImportError:  # pragma: no cover - a hard dependency
        raise UserError("writing GGUF needs the gguf package: pip install gguf") from None
    return gguf


def _gguf_version() -> str:
    from importlib.metadata import version

    return version("gguf")


def _field(reader, name: str):
    f = reader.fields.get(name)
    return None if f is None else f.contents()


def gguf_names(reader, hf_names: list[str]) -> dict[str, str]:
    """Each HF module name's tensor in the GGUF file (blk.28.ffn_down.weight for model.layers.28.mlp.down_proj)."""
    gguf = _gguf()
    arch = _field(reader, "general.architecture")
    by_name = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    if arch not in by_name:
        raise UserError(f"GGUF out: the source's architecture {arch!r} is not one gguf {_gguf_version()} knows")
    blocks = int(_field(reader, f"{arch}.block_count") or 0)
    table = gguf.get_tensor_name_map(by_name[arch], blocks)
    present = {t.name for t in reader.tensors}
    out = {}
    for hf in hf_names:
        name = table.get_name(f"{hf}.weight", try_suffixes=(".weight",))
        if name is None or name not in present:
            raise UserError(f"GGUF out: {hf} has no tensor in the source GGUF (gguf's {arch} name table gives "
                            f"{name!r}): write an HF folder with -o instead")
        out[hf] = name
    return out


def _llama_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's rope layout of q/k rows (convert_hf_to_gguf.py's LlamaModel.permute)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _layout(reader, name: str, original: np.ndarray, stored: np.ndarray):
    """How the HF matrix becomes the file's: as it is, or (llama-family q/k) permuted; chosen by which one the
    dequantized source tensor matches, so a wrong guess is refused rather than written."""
    arch = _field(reader, "general.architecture")
    candidates = [lambda w: w]
    for key in (f"{arch}.attention.head_count", f"{arch}.attention.head_count_kv"):
        heads = _field(reader, key)
        if heads and original.shape[0] % (2 * int(heads)) == 0:
            candidates.append(lambda w, h=int(heads): _llama_permute(w, h))
    scale = max(np.linalg.norm(stored), 1e-30)
    errors = [np.linalg.norm(f(original) - stored) / scale for f in candidates]
    best = int(np.argmin(errors))
    if errors[best] > 0.25:
        raise UserError(f"GGUF out: {name} in the source does not match the loaded weight (relative error "
                        f"{errors[best]:.2f}): is MODEL the GGUF file itself?")
    return candidates[best]


def target_type(source_type: str, quant: str) -> tuple[str, str | None]:
    """(the type an edited tensor is written in, a note when it is not what was asked)."""
    gguf = _gguf()
    want = source_type if quant == "same" else quant
    if want in NEAREST:
        return NEAREST[want], f"{want} cannot be quantized by gguf {_gguf_version()}: written as {NEAREST[want]}"
    return want, None


def quantize(matrix: np.ndarray, type_name: str) -> np.ndarray:
    gguf = _gguf()
    qtype = gguf.GGMLQuantizationType[type_name]
    if type_name == "F32":
        return matrix.astype(np.float32)
    if type_name == "F16":
        return matrix.astype(np.float16)
    return gguf.quants.quantize(matrix.astype(np.float32), qtype)


def dequantize(tensor) -> np.ndarray:
    gguf = _gguf()
    return gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(tuple(int(d) for d in
                                                                             reversed(tensor.shape)))


def temp_beside(out: Path) -> str:
    """A temporary file next to `out` (so the final rename is atomic) with the permissions a new file gets."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".gguf.tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return tmp


def write_gguf(source: Path, out: Path, edited: dict[str, tuple[torch.Tensor, torch.Tensor]], quant: str = "same",
               log=print) -> dict:
    """Write `out` from the GGUF file `source` with the HF modules in `edited` ({name: (original, edited)}, each
    out x in as laserlm loaded it) replaced. Returns {"changed": {gguf name: type}, "in_place": bool, "notes"}."""
    gguf = _gguf()
    if quant not in QUANTS:
        raise UserError(f"GGUF type {quant}: use one of {', '.join(QUANTS)}")
    reader = gguf.GGUFReader(str(source))
    names = gguf_names(reader, list(edited))
    tensors = {t.name: t for t in reader.tensors}
    new_data, notes = {}, []
    for hf, gname in names.items():
        t = tensors[gname]
        original, matrix = (m.detach().float().cpu().numpy() for m in edited[hf])
        to_file = _layout(reader, gname, original, dequantize(t))
        kind, note = target_type(t.tensor_type.name, quant)
        if note and note not in notes:
            notes.append(note)
        new_data[gname] = (quantize(to_file(matrix), kind), kind)
    in_place = all(kind == tensors[n].tensor_type.name and data.nbytes == tensors[n].n_bytes
                   for n, (data, kind) in new_data.items())
    tmp = temp_beside(out)
    try:
        if in_place:
            shutil.copyfile(source, tmp)
            with open(tmp, "r+b") as f:
                for n, (data, _) in new_data.items():
                    f.seek(tensors[n].data_offset)
                    f.write(np.ascontiguousarray(data).tobytes())
        else:
            _rewrite(reader, tmp, new_data)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    for note in notes:
        log(f"laser: {note}")
    return {"changed": {n: kind for n, (_, kind) in new_data.items()}, "in_place": in_place, "notes": notes}


def _rewrite(reader, path: str, new_data: dict) -> None:
    """gguf's own copy (its gguf_new_metadata script): every field, every untouched tensor's bytes as they are."""
    gguf = _gguf()
    arch = _field(reader, "general.architecture")
    writer = gguf.GGUFWriter(path, arch=arch, endianess=reader.endianess)
    alignment = _field(reader, "general.alignment")
    if alignment is not None:
        writer.data_alignment = int(alignment)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    for t in reader.tensors:
        if t.name in new_data:
            data, kind = new_data[t.name]
            qtype = gguf.GGMLQuantizationType[kind]
            writer.add_tensor_info(t.name, data.shape, data.dtype, data.nbytes, qtype)
        else:
            writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in reader.tensors:
        writer.write_tensor_data(new_data[t.name][0] if t.name in new_data else t.data,
                                 tensor_endianess=reader.endianess)
    writer.close()
