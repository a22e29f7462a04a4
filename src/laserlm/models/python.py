"""User code named on the command line as FILE.py:NAME (a model factory, an objective), and the identity of a
module that came from no file we could hash."""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
from pathlib import Path

import torch

from ..errors import UserError, first_line

_SPEC = re.compile(r"^(?P<file>.+\.py):(?P<name>[A-Za-z_][A-Za-z0-9_.]*)$")
_loaded: dict[Path, object] = {}


def is_python_spec(text: str) -> bool:
    return bool(_SPEC.match(text or ""))


def load_attr(spec: str, flag: str):
    """NAME from FILE.py. A file is imported once per process, so a model factory and an objective from the
    same file share its module state (its data, its caches)."""
    m = _SPEC.match(spec)
    if not m:
        raise UserError(f"{flag} {spec!r} is not FILE.py:NAME, e.g. examples/vit_classifier.py:objective")
    path = Path(m["file"]).expanduser().resolve()
    if not path.is_file():
        raise UserError(f"{flag} {spec!r}: no such file {m['file']}")
    module = _loaded.get(path)
    if module is None:
        name = f"laserlm_user_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
        loader_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module  # dataclasses and pickling look the module up by name
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))  # the file may import its neighbours
        try:
            loader_spec.loader.exec_module(module)
        except UserError:
            raise
        except Exception as e:
            sys.modules.pop(name, None)
            raise UserError(f"{flag} {spec!r}: importing {m['file']} failed ({type(e).__name__}: {first_line(e)})") from None
        _loaded[path] = module
    obj = module
    for part in m["name"].split("."):
        if not hasattr(obj, part):
            names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
            raise UserError(f"{flag} {spec!r}: {m['file']} has no {m['name']!r} (it has {', '.join(names) or 'nothing callable'})")
        obj = getattr(obj, part)
    return obj


def display_module(name: str) -> str:
    """A user file's module as its file stem (the name it is imported under is made unique)."""
    m = re.fullmatch(r"laserlm_user_(.+)_[0-9a-f]{8}", name or "")
    return m.group(1) if m else name


def file_digest(spec: str) -> str:
    m = _SPEC.match(spec)
    return hashlib.sha256(Path(m["file"]).expanduser().read_bytes()).hexdigest()[:16]


def module_fingerprint(model: torch.nn.Module, sample: int = 256) -> str:
    """Names, shapes, dtypes and a strided sample of every parameter: another checkpoint of the same model
    differs here, and hashing a sample costs milliseconds even for billions of weights."""
    h = hashlib.sha256(type(model).__name__.encode())
    with torch.no_grad():
        for name, p in model.state_dict().items():
            h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
            if p.numel() and p.device.type != "meta":
                flat = p.reshape(-1)
                picked = flat[:: max(1, flat.numel() // sample)][:sample]
                h.update(picked.detach().to("cpu", torch.float64).numpy().tobytes())
    return h.hexdigest()[:16]
