"""`laser compress`: a stack of reductions over many matrices, as small as a greedy search finds, whose val metric
stays within a tolerance of the base model's.

How: every single reduction of the grid is scored on val first (the search's sweep: prefix cache, resume, and
halving or a prescreen where asked). Those that keep the metric alone are candidates for the stack, ordered by
the parameters they remove, largest first; each is added if the stack with it still keeps the metric, and a
matrix takes at most one (its most aggressive reduction that passes; a rejected one leaves the matrix open to a
milder one further down). The order is the one the question asks for ("how much smaller can the model get"), and
the single-edit pre-filter keeps the stack evaluations few: a reduction that costs the metric alone rarely stops
costing it beside others. Every stack evaluation is stored as it comes (stack.jsonl), so a killed run resumes.
"""

from __future__ import annotations

import time
from pathlib import Path
from dataclasses import dataclass, field

import torch

from ..core.edits import Edit, plan
from ..core.layout import Layout
from ..core.svd import SVDCache
from ..evaluation.metrics import lower_is_better, rank_key
from .store import ResultStore
from .sweeper import Sweeper, text_tiebreak

COMPRESS_RHOS = (0.6, 0.4, 0.2, 0.1, 0.05, 0.01)  # below ~0.7 a reduced matrix stored as factors is smaller
STACK_STORE = "stack.jsonl"


def saving(layout: Layout, cache: SVDCache, edit: Edit) -> int:
    """Parameters the edit removes once the matrix is stored as factors (0 where the factors are not smaller)."""
    step = plan(layout.model, [edit], layout, cache)[0]
    m, n = step.target.shape
    count = step.reduce(cache).parameters
    return max(0, m * n - count) if count is not None else 0


@dataclass
class GreedyStack:
    """The greedy path: each accepted stack with its val metrics and the parameters removed so far."""

    stack: list[Edit] = field(default_factory=list)
    path: list[dict] = field(default_factory=list)
    tried: int = 0


def keeps(metrics: dict, base: dict, metric: str, tolerance: float, lower: bool) -> bool:
    """The metric is within `tolerance` of the base model's (>= base - T, or for a loss <= base + T)."""
    value, ref = metrics.get(metric), base[metric]
    if value is None:
        return False
    return value <= ref + tolerance if lower else value >= ref - tolerance


def greedy_stack(sweeper: Sweeper, singles: list[dict], base: dict, metric: str, tolerance: float,
                 layout: Layout, cache: SVDCache, lower: bool | None = None, log=None) -> GreedyStack:
    """Stack reductions, largest saving first, while the val metric stays within `tolerance` (see the module)."""
    down = lower_is_better(metric, lower)
    feasible = [r for r in singles if keeps(r["metrics"], base["metrics"], metric, tolerance, down)]
    ranked = []
    for r in feasible:
        edit = Edit.from_json(r["edits"][0])
        if (gain := saving(layout, cache, edit)) > 0:
            ranked.append((gain, r, edit))
    ranked.sort(key=lambda t: (-t[0], tuple(-x for x in rank_key(t[1]["metrics"], metric, lower)), text_tiebreak(t[2])))
    out = GreedyStack(path=[{"edits": [], "removed": 0, "metrics": base["metrics"]}])
    removed, used = 0, set()
    for gain, single, edit in ranked:
        matrix = (edit.type, edit.layer)
        if matrix in used:
            continue
        trial = out.stack + [edit]
        row = single if not out.stack else sweeper.evaluate(trial)
        out.tried += 1
        if keeps(row["metrics"], base["metrics"], metric, tolerance, down):
            out.stack, removed = trial, removed + gain
            used.add(matrix)
            out.path.append({"edits": [e.to_json() for e in trial], "removed": removed, "metrics": row["metrics"]})
            log and log(f"compress: + {edit} ({gain:,} parameters) -> {metric} {row['metrics'][metric]:.4f}, "
                        f"{removed:,} removed")
    return out


def stack_sweeper(job_sweeper: Sweeper, run_dir) -> Sweeper:
    """A sweeper over the same val rows and key context as the search's, storing stacks in stack.jsonl."""
    s = job_sweeper
    return Sweeper(s.model, s.layout, s.prepared, ResultStore(run_dir / STACK_STORE), s.context, "val", s.cache)


@torch.inference_mode()
def tokens_per_second(model, vocab: int, batch: int = 8, length: int = 128, repeats: int = 3) -> float:
    """Forward throughput on random token ids (batch x length), after one warm-up pass."""
    device = next(model.parameters()).device
    ids = torch.randint(3, max(4, vocab), (batch, length), generator=torch.Generator().manual_seed(0)).to(device)
    kwargs = {"use_cache": False} if hasattr(getattr(model, "config", None), "use_cache") else {}
    model(input_ids=ids, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        model(input_ids=ids, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * length * repeats / (time.perf_counter() - t0)


def parameter_count(model) -> int:
    """Distinct parameters (tied weights once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def weight_bytes(model) -> int:
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def size_figures(model, folder=None) -> dict:
    """Parameters, weight bytes and forward throughput of `model`; with `folder`, its weight files' bytes."""
    vocab = getattr(getattr(model, "config", None), "vocab_size", 1000)
    out = {"parameters": parameter_count(model), "weight_bytes": weight_bytes(model)}
    if folder is not None:
        out["folder_bytes"] = sum(p.stat().st_size for p in Path(folder).iterdir() if p.suffix == ".safetensors")
    return {**out, "tokens_per_second": tokens_per_second(model, vocab)}
