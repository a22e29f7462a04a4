"""A model's identity for run folders and result keys: the content of every weight file, hashed once.

Hashing a 16 GB checkpoint reads it once (tens of seconds); the digest is then kept in the cache folder, keyed by
the file's absolute path, size and modification time, so later runs pay a stat() per file. Any write to a file
changes its mtime or size and so its digest is recomputed: a changed tensor anywhere in the file changes the
identity (the old fingerprint read only the first and last MiB).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from ..core.svd import cache_root

CHUNK = 8 << 20
WEIGHT_SUFFIXES = (".json", ".safetensors", ".bin", ".gguf", ".pt", ".model", ".py")


def _memo_path() -> Path:
    return cache_root() / "fingerprints.json"


def _read_memo() -> dict:
    try:
        return json.loads(_memo_path().read_text())
    except (OSError, ValueError):
        return {}


def _write_memo(memo: dict) -> None:
    path = _memo_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(memo, f)
        os.replace(tmp, path)
    except OSError:  # a read-only cache only costs the hashing again
        pass


def file_fingerprint(path: Path) -> str:
    """blake2b of the file's name, size and whole content; memoised by (path, size, mtime)."""
    path = Path(path)
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    memo = _read_memo()
    if key in memo:
        return memo[key]
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{path.name}|{st.st_size}".encode())
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    memo = _read_memo()  # another process may have added entries meanwhile
    memo[key] = digest
    _write_memo(memo)
    return digest


def folder_fingerprint(folder: Path) -> str:
    """Every weight, config and tokenizer file of a model folder, by content."""
    h = hashlib.blake2b(digest_size=16)
    for p in sorted(Path(folder).iterdir()):
        if p.is_file() and p.suffix in WEIGHT_SUFFIXES:
            h.update(f"{p.name}:{file_fingerprint(p)}".encode())
    return h.hexdigest()


def versions() -> dict:
    """What changes a score besides the model, the rows and the edit: the code that computes it. A result key
    holds these, so a rerun after an upgrade recomputes rather than mixes old and new numbers."""
    import torch
    import transformers

    from .._version import __version__

    return {"laserlm": __version__, "torch": torch.__version__.split("+")[0], "transformers": transformers.__version__}
