"""`laser compress --target F`: keep at most F of the model's parameters, with the ranks the calibration loss
allocates (core/allocation.py), and let the task's val rows choose among the allocations.

Candidates: for each method of --methods (svd, asvd, whiten) and each allocation (uniform, loss), the ranks
that meet the size; and, where the paper's kind of edit helps the task (the best single svd reduction of an MLP
matrix in reach, swept on val at --rhos, beats the base), each of those again with that edit kept and the rest
allocated around it. Every candidate meets the size by construction; the best on val is exported, and scored
on test (held out: the interval is the plain paired one), on a held-out text, and for throughput.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import UserError

LASER_RHOS = (0.1, 0.01)  # the paper's aggressive end, where its gains were


def _reach(args, layout) -> tuple[list[str], list[int]]:
    from ..core.edits import parse_layers

    types = layout.expand_type_list(args.types or "mlp,attn")
    layers = parse_layers(args.layers, f"--layers {args.layers}")
    return types, list(range(layout.n_layers)) if layers is None else list(layers)


def _candidates(loaded, layout, cache, methods, types, layers, target, laser) -> list[dict]:
    from ..core.allocation import ALLOCATIONS, budget_for, curve_for
    from ..core.edits import Edit
    from ..core.ranks import rank_for
    from ..sweep.compress import parameter_count

    total = parameter_count(loaded.model)
    targets = [(t, i, layout.target(t, i)) for i in layers for t in types if t in layout.per_layer[i]]
    if any(tg.index is not None or tg.name is None for _, _, tg in targets):
        raise UserError("--target allocates ranks to whole matrices: leave experts' matrices out of --types")
    out = []
    for method in methods:
        curves = [curve_for(tg, t, i, method, cache) for t, i, tg in targets]
        budget = budget_for(total, target, curves)
        for name, allocate in ALLOCATIONS.items():
            for fixed in [None] + ([laser] if laser else []):
                rest, spend, held_removed, held_loss = curves, budget, 0, 0.0
                if fixed is not None:  # the LASER edit keeps its rank; the rest is allocated around it
                    rest = [c for c in curves if (c.type, c.layer) != (fixed.type, fixed.layer)]
                    held = next(c for c in curves if (c.type, c.layer) == (fixed.type, fixed.layer))
                    k = rank_for(fixed.amount, held.shape)
                    spend, held_removed, held_loss = budget - held.params(k), held.dense - held.params(k), float(held.loss[k])
                    if spend < sum(c.params(1) for c in rest):
                        continue
                ks = allocate(rest, spend)
                edits = [Edit(method, c.type, c.layer, f"k={k}") for c, k in zip(rest, ks) if c.params(k) < c.dense]
                out.append({"name": f"{method}/{name}" + (f" + {fixed}" if fixed else ""), "method": method,
                            "allocation": name, "laser": str(fixed) if fixed else None,
                            "edits": edits + ([fixed] if fixed else []),
                            "parameters": total - held_removed - sum(c.dense - c.params(k) for c, k in zip(rest, ks)),
                            "calibration_loss": (held_loss + float(sum(c.loss[k] for c, k in zip(rest, ks))))
                            / len(curves)})
    return out


def _reachable(loaded, layout, types, layers, target) -> None:
    from ..core.allocation import Curve, budget_for
    from ..sweep.compress import parameter_count

    shapes = [layout.target(t, i).weight.shape for i in layers for t in types if t in layout.per_layer[i]]
    budget_for(parameter_count(loaded.model), target, [Curve("", 0, tuple(s), None) for s in shapes])


def _laser_edit(on_val, base, metric):
    """The best single svd reduction of the LASER sweep, where it beats the base on val; else None."""
    from ..core.edits import Edit
    from ..evaluation.metrics import rank_key

    singles = [r for r in on_val.store.rows.values() if len(r["edits"]) == 1]
    if not singles:
        return None
    best = max(singles, key=lambda r: rank_key(r["metrics"], metric))
    return Edit.from_json(best["edits"][0]) if rank_key(best["metrics"], metric) > rank_key(base["metrics"], metric) \
        else None


def run_target(args) -> int:
    from ..analysis.compress_report import write_target_report
    from ..evaluation.metrics import rank_key
    from ..models.loading import load_model
    from ..sweep.compress import size_figures
    from ..sweep.job import make_sweeper, paired_test, progress_bar, run_job
    from .jobs import _export, _rescored, calibration_numerics, calibration_skip, task_search, test_figure
    from .options import (SHIPPED_TEXT, calibrate_from_args, command_line, output_dir, save_dtype, scorer_for,
                          text_or_shipped)

    if args.tolerance is not None:
        raise UserError("give --target F (a size) or --tolerance T (a metric floor), not both")
    if not 0 < args.target < 1:
        raise UserError(f"--target {args.target:g} is outside (0, 1): it is the fraction of parameters kept, e.g. 0.8")
    from ..core.calibrated import asvd_alpha

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if unknown := [m for m in methods if m not in ("svd", "whiten") and asvd_alpha(m) is None]:
        raise UserError(f"--target allocates ranks for svd, asvd (asvdA) and whiten, not {', '.join(unknown)}: use "
                        "--tolerance for the others")
    text = text_or_shipped(args.heldout, "--heldout")  # a missing file is refused before any work
    output_dir(args.output)
    out = Path(args.output)
    laser_args = argparse.Namespace(**{**vars(args), "methods": "svd", "rhos": args.rhos or ",".join(map(str, LASER_RHOS)),
                                       "types": "mlp"})
    # The paper's edit is swept on the MLP matrices in reach (with the model loaded once, for everything after).
    job, loaded, layout, cache = task_search(laser_args, LASER_RHOS, out / "search")
    types, layers = _reach(args, layout)
    _reachable(loaded, layout, types, layers, args.target)  # refused before any calibration or sweep
    mlp = [t for t in layout.expand_type_list("mlp") if t in types]
    job.types = mlp
    calibrate_from_args(args, loaded, layout, [_stat_edit(t, i) for t in types for i in layers], calibration_skip(args))
    metric = job.metric
    result = run_job(job, bar=progress_bar("compress: the LASER sweep")) if mlp else {"seconds": 0.0}
    on_val = make_sweeper(job, "val", "results.jsonl")
    base = on_val.evaluate([])
    laser = _laser_edit(on_val, base, metric) if mlp else None
    candidates = _candidates(loaded, layout, cache, methods, types, layers, args.target, laser)
    numerics = calibration_numerics(args, methods + ["whiten"])  # the allocation reads the statistics
    val_sw, test_sw = make_sweeper(job, "val", "target.jsonl"), make_sweeper(job, "test", "target_test.jsonl")
    for sw in (val_sw, test_sw):
        sw.context = {**sw.context, **numerics, "target": args.target}
    for c in candidates:
        c["val"] = val_sw.evaluate(c["edits"])["metrics"]
        print(f"compress: {c['name']}: {len(c['edits'])} matrices, {c['parameters']:,} parameters, val {metric} "
              f"{c['val'][metric]:.4f}", file=sys.stderr)
    # Val's metrics tie first (rank_key); on a full tie the calibration loss (one objective for every method).
    chosen = max(candidates, key=lambda c: (rank_key(c["val"], metric), -c["calibration_loss"], -c["parameters"]))
    base_test, chosen_test = test_sw.evaluate([]), test_sw.evaluate(chosen["edits"])
    paired = paired_test(base_test, chosen_test, metric)
    scorer = scorer_for(loaded, args)
    ppl_base = _perplexity(scorer, text) if loaded.tokenizer is not None and not scorer.mlm else None
    before = size_figures(loaded.model)
    figures = [{"split": "val", "metric": metric, "base": base["metrics"][metric], "edited": chosen["val"][metric],
                "difference": chosen["val"][metric] - base["metrics"][metric], "rows": job.splits["val"].rows["n"]},
               test_figure(job, metric, base_test, chosen_test, paired)]
    _export(loaded, chosen["edits"], out / "model", layout, cache, save_dtype(args, loaded), command=command_line(args),
            figures=figures, card_extra=[f"Size target: at most {args.target:g} of the parameters; chosen on val among "
                                         f"{len(candidates)} allocations: {chosen['name']}."])
    reloaded = load_model(str(out / "model"), dtype=args.dtype, device=args.device)
    after = size_figures(reloaded.model, out / "model")
    ppl_after = _perplexity(scorer_for(reloaded, args), text) if ppl_base else None
    summary = {"model": args.model, "task": args.task, "metric": metric, "target": args.target, "methods": methods,
               "types": types, "layers": [layers[0], layers[-1]], "laser": str(laser) if laser else None,
               "candidates": [{**{k: v for k, v in c.items() if k != "edits"},
                               "edits": [e.to_json() for e in c["edits"]]} for c in candidates],
               "chosen": chosen["name"], "stack": [e.to_json() for e in chosen["edits"]],
               "heldout": args.heldout or f"{SHIPPED_TEXT} (shipped)",
               "base": {"val": base["metrics"], "test": base_test["metrics"], **before,
                        "heldout_perplexity": ppl_base and ppl_base["perplexity"]},
               "compressed": {"val": chosen["val"], "test": chosen_test["metrics"], **after, **paired,
                              "val_reloaded": _rescored(job, reloaded).score().metrics,
                              "heldout_perplexity": ppl_after and ppl_after["perplexity"]},
               "search_seconds": round(result["seconds"], 1)}
    (out / "compress.json").write_text(json.dumps(summary, indent=2) + "\n")
    report = write_target_report(out, summary)
    b, c = summary["base"], summary["compressed"]
    print(f"chosen on val: {chosen['name']} ({len(chosen['edits'])} matrices)")
    print(f"parameters {b['parameters']:,} -> {c['parameters']:,} ({c['parameters'] / b['parameters']:.3f} kept, "
          f"target {args.target:g}); val {metric} {b['val'][metric]:.4f} -> {c['val'][metric]:.4f}; test {metric} "
          f"{b['test'][metric]:.4f} -> {c['test'][metric]:.4f}"
          + (f" (diff {c['test_diff']:+.4f}, 95% [{c['test_ci'][0]:+.4f}, {c['test_ci'][1]:+.4f}])"
             if "test_ci" in c else ""))
    if ppl_base:
        print(f"held-out perplexity {b['heldout_perplexity']:.2f} -> {c['heldout_perplexity']:.2f}; tokens/s "
              f"{b['tokens_per_second']:.0f} -> {c['tokens_per_second']:.0f}")
    print(f"model: {out / 'model'}  report: {report}")
    return 0


def _perplexity(scorer, text: str) -> dict:
    """Sliding-window perplexity, the window the model's position table allows (stride half of it)."""
    from ..evaluation.evaluate import max_positions, perplexity

    window = min(1024, max_positions(scorer.model) or 1024)
    return perplexity(scorer, text, window=window, stride=max(1, window // 2))


def _stat_edit(t, i):
    from ..core.edits import Edit

    return Edit("whiten", t, i, "k=1")

