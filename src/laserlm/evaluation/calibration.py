"""Calibration statistics for the data-aware methods (whiten/, asvd/): one pass of the unedited model over a
calibration set, the inputs of each matrix an edit needs gathered by forward pre-hooks into a running x x^T and
sum |x| (memory: one in x in matrix per distinct input, shared by q/k/v and by gate/up), cached on disk keyed by
the model's fingerprint, the calibration tokens and the dtype, and attached to the modules for core/calibrated.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from ..core.calibrated import InputStats
from ..core.layout import Layout, get_layout
from ..core.methods import get_method
from ..core.svd import cache_root, weight_key
from ..errors import UserError

DEFAULT_TEXT = "python_tutorial_and_faq.txt"
SEQ_LEN = 512
BATCH = 8
FORMAT = 1  # bump when what is gathered changes: old cache entries are then never read


@dataclass
class CalibrationSet:
    """Token sequences to calibrate on; `name` says where they came from, `digest` is their content."""

    name: str
    chunks: list[list[int]]
    digest: str

    @property
    def tokens(self) -> int:
        return sum(len(c) for c in self.chunks)


def default_text() -> str:
    return (resources.files("laserlm") / "data" / "calibration" / DEFAULT_TEXT).read_text(encoding="utf-8")


def source_text(source: str | None, skip_rows: int = 0) -> tuple[str, str]:
    """(name, text) of --calibration: the shipped text (None), a UTF-8 file, or a task's val rows, prompt and
    first answer (or the right choice) of each, after the first `skip_rows` (those a run scores)."""
    if source is None or source == "default":
        return f"default ({DEFAULT_TEXT})", default_text()
    path = Path(source).expanduser()
    if path.is_file() and path.suffix not in (".jsonl", ".json", ".csv"):
        try:
            return str(path), path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"calibration text {source} is not UTF-8 text (byte {e.start}): convert it first") from None
    from .tasks import BUILTINS, load_task

    if not path.is_file() and source not in BUILTINS and not source.startswith("lm-eval:"):
        raise UserError(f"calibration source {source!r}: no such file or task; give a text file, a task (e.g. "
                        "bb_wikidata) or leave it out for the shipped text")
    rows = load_task(source, None, "paper", None, None).select("val", 0, None)
    if skip_rows and len(rows) <= skip_rows:
        raise UserError(f"calibration on {source}: its {len(rows)} val rows are all among the {skip_rows} the run "
                        "scores; score fewer, or calibrate on another task or a text")
    parts = [r.prompt + (r.answers[0] if r.answers else r.choices[r.label] if r.choices else "")
             for r in rows[skip_rows:]]
    shown = f"val rows {skip_rows + 1}-{len(rows)}, past those the run scores" if skip_rows else "val rows"
    return f"{source} ({shown})", "\n\n".join(parts)


def calibration_set(tokenizer, source: str | None = None, max_tokens: int | None = None,
                    seq_len: int = SEQ_LEN, skip_rows: int = 0) -> CalibrationSet:
    """The text in sequences of `seq_len` tokens, each after the tokenizer's BOS where it has one (as the model
    sees a document start); the last, shorter sequence is kept when it has at least 16 tokens."""
    name, text = source_text(source, skip_rows)
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    bos = getattr(tokenizer, "bos_token_id", None)
    step = seq_len - (bos is not None)
    chunks = [([bos] if bos is not None else []) + ids[i:i + step] for i in range(0, len(ids), step)]
    chunks = [c for c in chunks if len(c) >= 16]
    if not chunks:
        raise UserError(f"calibration source {source!r}: the text gives fewer than 16 tokens; give a longer one")
    digest = hashlib.blake2b(json.dumps(chunks).encode(), digest_size=16).hexdigest()
    return CalibrationSet(name, chunks, digest)


def seq_len_for(model) -> int:
    """SEQ_LEN, or the model's position table where that is shorter."""
    config = getattr(model, "config", None)
    limits = [getattr(config, n, None) for n in ("max_position_embeddings", "n_positions", "n_ctx")]
    return min([SEQ_LEN] + [v for v in limits if isinstance(v, int) and v > 16])


def model_fingerprint(model) -> str:
    """Every parameter and buffer by content (for a model without a Loaded identity)."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        h.update(f"{name}:{weight_key(t)}".encode())
    return h.hexdigest()


def needed_modules(model, edits, layout: Layout | None = None) -> dict[str, torch.nn.Module]:
    """The modules whose inputs the data-aware edits among `edits` read, by name (plan() checks the rest)."""
    layout = layout or get_layout(model)
    from ..core.edits import resolve_edits

    out = {}
    for edit in resolve_edits(edits, layout):
        if get_method(edit.method).needs_stats:
            for target in layout.target(edit.type, edit.layer).matrices():
                if target.index is not None:
                    raise UserError(f"{edit} names one expert's matrix ({target.name}): the data-aware methods "
                                    "need each expert's own inputs, which laserlm does not gather; use svd/ on experts")
                out[target.name] = target.module
    return out


class _Accumulator:
    def __init__(self):
        self.gram = None
        self.abs_sum = None
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        g = (x.T @ x).double()
        a = x.abs().sum(0).double()
        self.gram = g if self.gram is None else self.gram.add_(g)
        self.abs_sum = a if self.abs_sum is None else self.abs_sum.add_(a)
        self.count += x.shape[0]


class _Stop(Exception):
    pass


def _gather(model, modules: dict[str, torch.nn.Module], calib: CalibrationSet, layout: Layout) -> dict:
    """One pass: each module's accumulator; modules fed the very same tensor share one."""
    accs: dict[str, _Accumulator] = {}
    seen: dict[int, tuple] = {}  # id(input) -> (weakref to it, its accumulator), this batch only

    def hook(name):
        def pre(module, args):
            x = args[0]
            entry = seen.get(id(x))
            if entry is not None and entry[0]() is x:
                if name not in accs:
                    accs[name] = entry[1]
                if accs[name] is entry[1]:
                    return
            acc = accs.setdefault(name, _Accumulator())
            acc.add(x.detach())
            seen[id(x)] = (weakref.ref(x), acc)
        return pre

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in modules.items()]
    last = _last_block(model, modules, layout)
    if last is not None:
        def stop(*_):
            raise _Stop
        handles.append(last.register_forward_hook(stop))
    device = next(model.parameters()).device
    try:
        by_len: dict[int, list] = {}
        for c in calib.chunks:
            by_len.setdefault(len(c), []).append(c)
        with torch.no_grad():
            for length, chunks in by_len.items():
                for i in range(0, len(chunks), BATCH):
                    seen.clear()
                    ids = torch.tensor(chunks[i:i + BATCH], device=device)
                    try:
                        model(input_ids=ids, use_cache=False)
                    except _Stop:
                        pass
    finally:
        for h in handles:
            h.remove()
    return accs


def _last_block(model, modules, layout: Layout):
    """The block after which no needed module runs: the pass stops there (the head and later layers are skipped)."""
    if not layout.blocks:
        return None
    blocks = model.get_submodule(layout.blocks)
    prefix = layout.blocks + "."
    layers = [int(n[len(prefix):].split(".")[0]) for n in modules if n.startswith(prefix)]
    if len(layers) != len(modules):
        return None
    return blocks[max(layers)]


def _key(identity, model, calib: CalibrationSet) -> str:
    fingerprint = json.dumps(identity, sort_keys=True) if identity else model_fingerprint(model)
    dtype = str(next(model.parameters()).dtype)
    text = json.dumps({"model": fingerprint, "dtype": dtype, "tokens": calib.digest, "format": FORMAT})
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _save(path: Path, acc_tensors: dict) -> bool:
    from safetensors.torch import save_file

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        save_file(acc_tensors, tmp)
        os.replace(tmp, path)
        return True
    except OSError:  # a read-only or full cache only costs a new pass next time
        return False


def _load(path: Path, key: str) -> InputStats | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return InputStats(f.get_tensor("abs_mean"), int(f.get_tensor("count")), key, path=path)
    except Exception:  # missing or corrupt: gathered again
        return None


def calibrate(model, tokenizer, edits, *, source: str | None = None, max_tokens: int | None = None,
              layout: Layout | None = None, identity: dict | None = None, disk: bool = True,
              quiet: bool = False, skip_rows: int = 0) -> dict[str, InputStats]:
    """Gather (or read from the cache) the input statistics that the data-aware edits among `edits` need, and
    attach them to their modules; returns them by module name. Call it on the unedited model.

    >>> laserlm.calibrate(model, tokenizer, ["whiten/mlp:all:0.3"])   # the shipped text, all of it
    >>> with laserlm.edited(model, ["whiten/mlp:all:0.3"]): ...
    """
    layout = layout or get_layout(model)
    modules = needed_modules(model, edits, layout)
    if not modules:
        return {}
    calib = calibration_set(tokenizer, source, max_tokens, seq_len_for(model), skip_rows)
    key = _key(identity, model, calib)
    folder = cache_root() / "calibration" / key
    found = {n: _load(folder / f"{n}.safetensors", key) if disk else None for n in modules}
    missing = {n: m for n, m in modules.items() if found[n] is None}
    if missing:
        t0 = time.perf_counter()
        accs = _gather(model, missing, calib, layout)
        for name in missing:
            acc = accs.get(name)
            if acc is None or acc.count == 0:
                raise UserError(f"calibration: {name} saw no input on the calibration set: it is not on the "
                                "model's forward path for text")
            mean_gram, abs_mean = acc.gram / acc.count, acc.abs_sum / acc.count
            path = folder / f"{name}.safetensors"
            saved = disk and _save(path, {"gram": mean_gram.cpu(), "abs_mean": abs_mean.cpu(),
                                          "count": torch.tensor(acc.count)})
            found[name] = InputStats(abs_mean.cpu(), acc.count, key, path=path) if saved else \
                InputStats(abs_mean.cpu(), acc.count, key, gram_tensor=mean_gram.cpu())
        if not quiet:
            print(f"laser: calibration on {calib.name}: {calib.tokens:,} tokens, inputs of {len(missing)} matrices "
                  f"in {time.perf_counter() - t0:.1f} s" + (f" (cached in {folder})" if disk else ""), file=sys.stderr)
    for name, module in modules.items():
        module.laser_input_stats = found[name]
    return found


def calibration_identity(source: str | None, max_tokens: int | None, skip_rows: int = 0) -> dict:
    """What a run's results depend on when it uses data-aware methods (result keys and run.json hold it)."""
    name, text = source_text(source, skip_rows)
    digest = hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
    return {"calibration": name, "calibration_text": digest, "calibration_tokens": max_tokens,
            "seq_len": SEQ_LEN, "format": FORMAT}
