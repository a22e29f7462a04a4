"""One search of a loaded model on a task, end to end: the sweep on val, selection, the test split, the
Marchenko-Pastur baseline, composition and best.json (the caller writes report.md). `laser search` runs one;
`laser reproduce` runs one per benchmark with the same model in memory.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..core.edits import Edit
from ..core.layout import Layout
from ..core.svd import SVDCache
from ..evaluation.evaluate import Prepared
from ..evaluation.metrics import Metric
from ..evaluation.scoring import Scorer
from .store import ResultStore, check_manifest, rows_hash
from .sweep import Sweeper, best_row, compose, grid


@dataclass
class SearchJob:
    """Everything one search needs; `identity` (model, task) and `numerics` (dtype, svd, device) go into the
    run's manifest and every result key, `info` into the manifest only."""

    model: object
    layout: Layout
    scorer: Scorer
    val: list
    test: list
    metrics: list[Metric]
    metric: str
    gen_tokens: int
    run_dir: Path
    types: list[str]
    layers: list[int]
    amounts: list
    methods: list[str]
    cache: SVDCache
    identity: dict
    numerics: dict
    info: dict = field(default_factory=dict)
    compose: bool = False
    # sweep(on_val, pending_candidates, on_done): another backend for the single-edit sweep (Ray)
    sweep: Callable | None = None


def device_type(model) -> str:
    """cpu, cuda, or 'map' for a model spread by a device map."""
    types = {p.device.type for p in model.parameters()} - {"meta"}
    return types.pop() if len(types) == 1 else "map"


def run_job(job: SearchJob, bar=None, log=None) -> dict:
    """Run the search and write best.json; returns its content plus "seconds" and "swept". The caller writes
    report.md (analysis sits above this package). `bar(total)` makes a progress bar (a tqdm) for the sweep."""
    log = log or (lambda m: print(m, file=sys.stderr))
    candidates = grid(job.types, job.layers, job.amounts, job.methods)
    numerics = {**job.numerics, "metrics": sorted(m.name for m in job.metrics), "gen_tokens": job.gen_tokens}
    manifest = {**job.identity, "val_rows": {"n": len(job.val), "hash": rows_hash(job.val)},
                "test_rows": {"n": len(job.test), "hash": rows_hash(job.test)}, **numerics}
    check_manifest(job.run_dir, manifest,
                   {"types": job.types, "layers": job.layers, "amounts": job.amounts, "methods": job.methods},
                   {"metric": job.metric, **job.info})
    # Each row set is encoded and packed once, whichever store its results go to.
    prepared = {split: (Prepared(job.scorer, rows, job.metrics, job.gen_tokens), rows_hash(rows))
                for split, rows in (("val", job.val), ("test", job.test))}

    def sweeper(split, store_name):
        rows, digest = prepared[split]
        context = {"model": job.identity["model"], "task": job.identity["task"], "rows": digest, **numerics}
        return Sweeper(job.model, job.layout, rows, ResultStore(job.run_dir / store_name), context, split, job.cache)

    t0 = time.perf_counter()
    on_val = sweeper("val", "results.jsonl")
    pending = [c for c in candidates if on_val.done([c]) is None]
    log(f"{len(candidates)} candidates ({len(candidates) - len(pending)} already done), {len(job.val)} val rows, "
        f"{len(job.test)} test rows -> {job.run_dir}")
    with bar(len(pending)) if bar else nullcontext() as progress:
        tick = (lambda row: progress.update(1)) if progress is not None else None
        if job.sweep is None:
            on_val.sweep(candidates, on_done=tick)
        else:
            on_val.sweep([])  # the base model, here
            job.sweep(on_val, pending, tick)
    secs = time.perf_counter() - t0
    metric = job.metric
    base = on_val.done([])
    rows = [r for r in on_val.store.rows.values() if r["split"] == "val"]
    best = best_row(rows, metric)
    on_test = sweeper("test", "test.jsonl")
    result = {"metric": metric, "base": summary([], base, on_test.evaluate([]), metric)}
    best_edits = [Edit.from_json(e) for e in best["edits"]] if best else []
    result["best"] = summary(best_edits, best or base, on_test.evaluate(best_edits), metric)
    if best_edits:  # the data-free baseline on the same matrix: keep what clears the Marchenko-Pastur edge
        mp = [Edit("mp", best_edits[0].type, best_edits[0].layer)]
        baselines = sweeper("val", "baselines.jsonl")  # kept out of results.jsonl, which selection reads
        result["mp"] = summary(mp, baselines.evaluate(mp), on_test.evaluate(mp), metric)
    if job.compose:
        on_compose = sweeper("val", "composed.jsonl")
        stack, row = compose(on_compose, rows, base, metric, log=log)
        result["composed"] = summary(stack, row, on_test.evaluate(stack), metric)
    (job.run_dir / "best.json").write_text(json.dumps(result, indent=2) + "\n")
    return {**result, "seconds": secs, "swept": len(pending)}


def summary(edits, val_row: dict, test_row: dict, metric: str) -> dict:
    return {"edits": [e.to_json() for e in edits], "val": val_row["metrics"].get(metric),
            "test": test_row["metrics"].get(metric), "val_metrics": val_row["metrics"],
            "test_metrics": test_row["metrics"]}


def summary_lines(result: dict) -> list[str]:
    metric = result["metric"]
    lines = [f"swept {result.get('swept', '?')} candidates in {result.get('seconds', 0):.1f} s"]
    for name in ("base", "best", "mp", "composed"):
        if name in result:
            r = result[name]
            edits = " ".join(str(Edit.from_json(e)) for e in r["edits"]) or "(no edit)"
            lines.append(f"{name:9s} val {metric} {r['val']:.4f}  test {metric} {r['test']:.4f}  {edits}")
    return lines
