"""One search, end to end: the sweep on val, selection, the test split, the Marchenko-Pastur baseline,
composition and best.json (the caller writes report.md). What is scored is a split: text rows prepared once
(`laser search -t`, `laser reproduce`), or a user's objective (`laserlm.search`, `laser search --objective`);
everything else is the same code.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..core.edits import Edit
from ..core.layout import Layout
from ..models.identity import versions
from ..core.svd import SVDCache
from ..evaluation.evaluate import Prepared
from ..evaluation.generation import GenSettings
from ..evaluation.metrics import Metric, lower_is_better
from ..evaluation.scoring import Scorer
from ..evaluation.selection import DEFAULT_RULE, verdict_text
from ..evaluation.stats import compare
from ..errors import UserError
from .halving import HALVING_STORE, halve, rounds_text, schedule
from .prescreen import GRAD_ROWS, PRESCREEN_FILE, prescreen, shortlist
from .objective import Objective, ObjectiveSplit
from .store import ResultStore, check_manifest, rows_hash
from .pick import ALPHA, choose
from .sweeper import Sweeper, best_row, compose, grid


@dataclass
class Split:
    """What is scored on one split (`score(context=None)` gives the model's metrics as it is now), and the
    fingerprint of its rows ({"n", "hash"}) that the manifest and every result key record."""

    scoring: Prepared | ObjectiveSplit
    rows: dict
    head: Callable[[int], "Split"] | None = None  # the first n rows as a split of their own (--halving)


def _text_split(prepared: Prepared) -> Split:
    rows = prepared.examples
    return Split(prepared, {"n": len(rows), "hash": rows_hash(rows)}, lambda n: _text_split(prepared.head(n)))


def text_splits(scorer: Scorer, val: list, test: list, metrics: list[Metric], gen: GenSettings) -> dict[str, Split]:
    """Each row set encoded and packed once (and, for a generation metric, generated once: the drafts), whichever
    store its results go to."""
    return {split: _text_split(Prepared(scorer, rows, metrics, gen)) for split, rows in (("val", val), ("test", test))}


def text_numerics(metrics: list[Metric], gen: GenSettings) -> dict:
    """What a text search's scores depend on besides the model and rows (min_new_tokens only where it is set, so
    the keys of earlier runs without it stay valid)."""
    out = {"metrics": sorted(m.name for m in metrics), "gen_tokens": gen.max_new}
    return {**out, "min_new_tokens": gen.min_new} if gen.min_new else out


def objective_splits(objective: Objective, model) -> dict[str, Split]:
    return {split: Split(ObjectiveSplit(objective, model, split), objective.fingerprint(split))
            for split in ("val", "test")}


@dataclass
class SearchJob:
    """Everything one search needs; `identity` (model, task or objective) and `numerics` (dtype, svd,
    device, ...) go into the run's manifest and every result key, `info` into the manifest only."""

    model: object
    layout: Layout
    splits: dict[str, Split]
    metric: str
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
    lower: bool | None = None  # the metric's direction where the metric registry does not know it
    halving: int | None = None  # ETA of successive halving over val rows; None: every candidate on all of val
    prescreen: str | None = None  # mp, snr or grad: rank the candidates before any evaluation ...
    budget: int | None = None  # ... and evaluate only this many of the best ranked (grad-matrix: matrices)
    grad_rows: int = GRAD_ROWS  # val rows of the gradient of --prescreen grad / grad-matrix
    select: str = DEFAULT_RULE  # the selection rule (sweep/pick.py); "paper": the paper's argmax over edits
    alpha: float = ALPHA  # the level of the verdict: an edit when p_any < alpha

    def __post_init__(self):
        # The code's versions are part of every key: a rerun after an upgrade recomputes, never mixes.
        self.numerics = {**self.numerics, "versions": self.numerics.get("versions") or versions()}


def progress_bar(desc: str = "search") -> Callable:
    """`bar(total)` for run_job: a tqdm over candidates on stderr."""
    def bar(total: int):
        from tqdm import tqdm

        return tqdm(total=total, unit="cand", desc=desc, dynamic_ncols=True, file=sys.stderr)
    return bar


def device_type(model) -> str:
    """cpu, cuda, or 'map' for a model spread by a device map."""
    types = {p.device.type for p in model.parameters()} - {"meta"}
    return types.pop() if len(types) == 1 else "map"


def run_job(job: SearchJob, bar=None, log=None) -> dict:
    """Run the search and write best.json; returns its content plus "seconds", "swept" and "halving" (the
    rounds' (rows, candidates), or None). The caller writes
    report.md (analysis sits above this package). `bar(total)` makes a progress bar (a tqdm) for the sweep."""
    log = log or (lambda m: print(m, file=sys.stderr))
    candidates = grid(job.types, job.layers, job.amounts, job.methods)
    numerics = job.numerics
    manifest = {**job.identity, "val_rows": job.splits["val"].rows, "test_rows": job.splits["test"].rows,
                **numerics}
    lower = lower_is_better(job.metric, job.lower)
    check_manifest(job.run_dir, manifest,
                   {"types": job.types, "layers": job.layers, "amounts": job.amounts, "methods": job.methods},
                   {"metric": job.metric, "lower_is_better": lower, "halving": job.halving,
                    "prescreen": job.prescreen, "budget": job.budget, **job.info})
    if job.prescreen:
        candidates = _screened(job, candidates, log)

    def sweeper(split, store, part=None):
        return make_sweeper(job, split, store, part)

    t0 = time.perf_counter()
    on_val = sweeper("val", "results.jsonl")
    if isinstance(job.splits["val"].scoring, ObjectiveSplit):
        on_val.evaluate([])  # the base row first: an objective that fails, fails before any output
    pending = [c for c in candidates if on_val.done([c]) is None]
    sizes = ", ".join(f"{p.rows['n']} {s} rows" for s, p in job.splits.items() if p.rows["n"] is not None)
    log(f"{len(candidates)} candidates ({len(candidates) - len(pending)} already done)"
        f"{', ' + sizes if sizes else ''} -> {job.run_dir}")
    plan = None
    if job.halving:
        if job.splits["val"].head is None or job.sweep is not None:
            raise UserError("successive halving slices text rows and runs in this process: not with an objective or on Ray")
        plan = schedule(len(candidates), job.splits["val"].rows["n"], job.halving)
        log(f"halving: {rounds_text(plan)}")
    with bar(sum(c for _, c in plan) if plan else len(pending)) if bar else nullcontext() as progress:
        tick = (lambda row: progress.update(1)) if progress is not None else None
        if plan:
            partial = ResultStore(job.run_dir / HALVING_STORE)

            def score(cands, n):
                on_part = sweeper("val", partial, job.splits["val"].head(n))
                on_part.sweep(cands, on_done=tick)
                return {c: on_part.done([c])["metrics"] for c in cands}

            on_val.sweep(halve(candidates, plan, score, job.metric, job.lower, log), on_done=tick)
        elif job.sweep is None:
            on_val.sweep(candidates, on_done=tick)
        else:
            on_val.sweep([])  # the base model, here
            job.sweep(on_val, pending, tick)
    secs = time.perf_counter() - t0
    metric = job.metric
    base = on_val.done([])
    rows = [r for r in on_val.store.rows.values() if r["split"] == "val"]
    singles = [r for r in rows if len(r["edits"]) == 1]
    best, selection = choose(base, singles, metric, job.lower, job.select, job.alpha)
    if plan and len(plan) > 1:
        selection["note"] = (f"successive halving: the figures compare the last round's {len(singles)} candidates; "
                             f"the earlier rounds' choices among {len(candidates)} are not corrected for")
    top = best_row(singles, metric, job.lower)
    if top is not None:  # what the analyses study when the rule keeps the base
        selection["argmax"] = top["edits"]
    on_test = sweeper("test", "test.jsonl")
    base_test = on_test.evaluate([])
    result = {"metric": metric, "lower_is_better": lower, "base": summary([], base, base_test, metric)}
    best_edits = [Edit.from_json(e) for e in best["edits"]] if best else []
    result["best"] = summary(best_edits, best or base, on_test.evaluate(best_edits), metric, base_test)
    result["selection"] = selection
    if best_edits:  # the data-free baseline on the same matrix: keep what clears the Marchenko-Pastur edge
        mp = [Edit("mp", best_edits[0].type, best_edits[0].layer)]
        baselines = sweeper("val", "baselines.jsonl")  # kept out of results.jsonl, which selection reads
        result["mp"] = summary(mp, baselines.evaluate(mp), on_test.evaluate(mp), metric, base_test)
    if job.compose:
        on_compose = sweeper("val", "composed.jsonl")
        stack, row = compose(on_compose, rows, base, metric, log=log, lower=job.lower)
        result["composed"] = summary(stack, row, on_test.evaluate(stack), metric, base_test)
        # the family compose chose from: every single edit and every stack it evaluated
        stacks = [r for r in on_compose.store.rows.values() if len(r["edits"]) > 1]
        _, result["composed"]["selection"] = choose(base, singles + stacks, metric, job.lower, "best", job.alpha,
                                                    argmax=row if stack else None)
    (job.run_dir / "best.json").write_text(json.dumps(result, indent=2) + "\n")
    return {**result, "seconds": secs, "swept": len(pending), "halving": plan}


def make_sweeper(job: SearchJob, split: str, store, part: Split | None = None) -> Sweeper:
    """A sweeper over a split of the job (or `part`, a slice of it), keyed like every row of the run, storing in
    `store` (a ResultStore, or a file name in the run folder). Test rows keep their per-row values."""
    part = part or job.splits[split]
    context = {"model": job.identity["model"], "task": job.identity["task"], "rows": part.rows["hash"],
               **job.numerics}
    store = store if isinstance(store, ResultStore) else ResultStore(job.run_dir / store)
    return Sweeper(job.model, job.layout, part.scoring, store, context, split, job.cache, per_row=split == "test")


def _screened(job: SearchJob, candidates: list[Edit], log) -> list[Edit]:
    """The `budget` best candidates by the prescreen, kept in prescreen.json: a rerun after a kill evaluates
    the same set, even where a gradient would come out a few ulps apart."""
    path = job.run_dir / PRESCREEN_FILE
    saved = json.loads(path.read_text()) if path.exists() else {}
    order = [Edit.from_json(r["edit"]) for r in saved.get("order", [])]
    gradient = job.prescreen in ("grad", "grad-matrix")
    if saved.get("kind") != job.prescreen or set(order) != set(candidates):
        if gradient and job.splits["val"].head is None:
            raise UserError("the gradient prescreen differentiates the loss of text rows; an objective can use mp or snr")
        prepared = job.splits["val"].head(min(job.grad_rows, job.splits["val"].rows["n"])).scoring \
            if gradient else None
        t0 = time.perf_counter()
        ranked = prescreen(job.prescreen, job.layout, job.cache, candidates, prepared)
        log(f"prescreen {job.prescreen}: {len(ranked)} candidates ranked in {time.perf_counter() - t0:.1f} s"
            + (f", the best {job.budget} go on" if job.budget else ""))
        tmp = path.with_suffix(".tmp")  # run_dir exists: check_manifest made it
        tmp.write_text(json.dumps({"kind": job.prescreen, "budget": job.budget,
                                   "order": [{"edit": c.to_json(), "score": sc} for c, sc in ranked]}) + "\n")
        os.replace(tmp, path)
        saved = {"order": [{"edit": c.to_json(), "score": sc} for c, sc in ranked]}
    ranked = [(Edit.from_json(r["edit"]), r["score"]) for r in saved["order"]]
    return shortlist(ranked, job.prescreen, job.budget)


def summary(edits, val_row: dict, test_row: dict, metric: str, base_test: dict | None = None) -> dict:
    """One line of best.json; against `base_test` (the base model's test row), the paired comparison on test."""
    out = {"edits": [e.to_json() for e in edits], "val": val_row["metrics"].get(metric),
           "test": test_row["metrics"].get(metric), "val_metrics": val_row["metrics"],
           "test_metrics": test_row["metrics"]}
    return {**out, **paired_test(base_test, test_row, metric)} if base_test is not None else out


def paired_test(base_row: dict, row: dict, metric: str) -> dict:
    """test_ci (95% paired bootstrap interval of the selection metric's difference from the base model),
    test_p_mcnemar (exact, for a 0-1 metric), and test_paired: the same for every metric with per-row values."""
    b, o = base_row.get("per_row") or {}, row.get("per_row") or {}
    groups = base_row.get("groups")  # rows of one group are resampled together
    paired = {m: compare(b[m], o[m], groups=groups) for m in o if m in b and b[m] and len(b[m]) == len(o[m])}
    out: dict = {}
    if metric in paired:
        out["test_diff"], out["test_ci"] = paired[metric]["diff"], paired[metric]["ci"]
        if "mcnemar" in paired[metric]:
            out["test_p_mcnemar"] = paired[metric]["mcnemar"]["p"]
    if paired:
        out["test_paired"] = paired
    return out


def summary_lines(result: dict) -> list[str]:
    metric = result["metric"]
    if result.get("halving"):
        lines = [f"successive halving ({rounds_text(result['halving'])}) in {result.get('seconds', 0):.1f} s"]
    else:
        lines = [f"swept {result.get('swept', '?')} candidates in {result.get('seconds', 0):.1f} s"]
    for name in ("base", "best", "mp", "composed"):
        if name in result:
            r = result[name]
            edits = " ".join(str(Edit.from_json(e)) for e in r["edits"]) or "(no edit)"
            lines.append(f"{name:9s} val {metric} {r['val']:.4f}  test {metric} {r['test']:.4f}{ci_text(r)}  {edits}")
    if "selection" in result:
        lines.append(f"selection ({result['selection']['rule']}): {verdict_text(result['selection'])}")
    return lines


def ci_text(r: dict) -> str:
    """' (diff +0.0500, 95% CI [+0.0200, +0.0800], McNemar p 0.012)', or '' without a paired comparison."""
    if "test_ci" not in r:
        return ""
    lo, hi = r["test_ci"]
    p = f", McNemar p {r['test_p_mcnemar']:.3g}" if "test_p_mcnemar" in r else ""
    return f" (diff {r['test_diff']:+.4f}, 95% CI [{lo:+.4f}, {hi:+.4f}]{p})"
