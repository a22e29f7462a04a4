"""The run folder: an append-only JSONL store per split, and a manifest that says what the run is for.

Each finished candidate is one line, written with flush + fsync before the next starts, keyed by a hash
of (model identity, task, split, rows, edits). A kill at any moment loses at most the candidate in flight;
a torn last line is cut off when a search reopens the store (a reader such as `laser report` only skips
it, since the search may be writing that very line); a rerun skips every key already present.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
from pathlib import Path

from ..errors import UserError

MANIFEST = "run.json"


def rows_hash(examples) -> str:
    """A fingerprint of the exact rows evaluated: their prompts, targets and order."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.prompt, ex.answers, ex.choices, ex.label, ex.paraphrases]).encode())
    return h.hexdigest()[:16]


def pack_rows(values: list[float]) -> dict:
    """Per-row values, compactly: a bit per row for a 0/1 metric, else float32, base64 in both cases (500 rows:
    84 or 2,668 characters). What the selection statistics read back for every candidate."""
    import numpy as np

    if all(v in (0.0, 1.0) for v in values):
        return {"n": len(values), "bits": base64.b64encode(np.packbits(np.array(values, dtype=np.uint8))).decode()}
    return {"n": len(values), "f32": base64.b64encode(np.array(values, dtype="<f4").tobytes()).decode()}


def unpack_rows(packed: dict) -> list[float]:
    import numpy as np

    if "bits" in packed:
        bits = np.unpackbits(np.frombuffer(base64.b64decode(packed["bits"]), dtype=np.uint8))[:packed["n"]]
        return bits.astype(float).tolist()
    return np.frombuffer(base64.b64decode(packed["f32"]), dtype="<f4").astype(float).tolist()


def candidate_key(context: dict, split: str, edits: list[dict]) -> str:
    """Edits on distinct matrices commute, so their order does not change the key."""
    canon = sorted(json.dumps(e, sort_keys=True) for e in edits)
    payload = json.dumps({"context": context, "split": split, "edits": canon}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


class ResultStore:
    """Rows by key, backed by an append-only JSONL file (or memory only, with path None)."""

    def __init__(self, path: Path | str | None, read_only: bool = False):
        self.path = Path(path) if path is not None else None
        self.read_only = read_only
        self.rows: dict[str, dict] = {}
        self._load()

    def _load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):  # killed mid-write, or being written right now
            cut = data.rfind(b"\n") + 1
            if not self.read_only:
                with open(self.path, "r+b") as f:
                    f.truncate(cut)
            data = data[:cut]
        for n, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key = row["key"]
            except (json.JSONDecodeError, KeyError, TypeError):
                print(f"laser: skipping unreadable line {n} of {self.path}", file=sys.stderr)
                continue
            self.rows.setdefault(key, row)

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def get(self, key: str) -> dict | None:
        return self.rows.get(key)

    def append(self, row: dict) -> None:
        if self.read_only:
            raise RuntimeError(f"{self.path} was opened read-only")
        if row["key"] in self.rows:
            return
        if self.path is None:
            self.rows[row["key"]] = row
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.rows[row["key"]] = row


def check_manifest(run_dir: Path, manifest: dict, extend: dict, info: dict | None = None) -> dict:
    """Create RUN_DIR/run.json, or refuse a rerun made for another model, task or split.

    `extend` lists grow with each rerun (a wider grid); `info` is recorded but never compared."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / MANIFEST
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise UserError(f"{path} is unreadable: use a new -o folder") from None
        for field in manifest:
            if old.get(field) != manifest[field]:
                raise UserError(
                    f"{run_dir} holds a run for another {field} ({short(old.get(field))}, now "
                    f"{short(manifest[field])}): use a new -o folder, or rerun with the same settings"
                )
        for key, values in extend.items():  # a wider grid extends the run
            old[key] = sorted(set(map(str, old.get(key, []))) | set(map(str, values)))
        manifest = old
    else:
        manifest = {**manifest, **{k: sorted(map(str, v)) for k, v in extend.items()}}
    manifest.update(info or {})
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, path)
    return manifest


def short(value) -> str:
    """A value for a one-line message: JSON for non-strings, cut at 80 characters."""
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) < 80 else text[:77] + "..."
