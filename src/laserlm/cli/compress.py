"""`laser compress`: the smallest stack of reductions a greedy search finds whose val metric stays within
--tolerance of the base model's, written as a --factorized folder, with a report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .jobs import _export, _rescored, add_select_args, add_speed_args, check_speed_args, task_search, test_figure
from .options import (add_calibration_args, command_line, add_model_args, add_save_dtype, add_svd_args, add_task_args, non_negative_float, output_dir,
                      positive_int, save_dtype)

EXAMPLE = """laser compress demo -t bb_wikidata --metric top1 --limit 300 -o runs/compress
laser compress demo -t bb_epistemic --types mlp --layers 15-29 --methods svd,cluster4 --tolerance 0.01 -o runs/c2
laser compress demo -t bb_wikidata --target 0.8 --methods whiten,svd --layers 20-29 --limit 100 -o runs/c3"""


def run_compress(args) -> int:
    from ..analysis.compress_report import write_compress_report
    from ..analysis.report import write_report
    from ..core.edits import Edit
    from ..models.loading import load_model
    from ..sweep.compress import COMPRESS_RHOS, greedy_stack, size_figures, stack_sweeper
    from ..sweep.job import make_sweeper, paired_test, progress_bar, run_job

    check_speed_args(args)
    args.tolerance = 0.0 if args.tolerance is None else args.tolerance
    args.types = args.types or "mlp"
    output_dir(args.output)
    out = Path(args.output)
    job, loaded, layout, cache = task_search(args, COMPRESS_RHOS, out / "search")
    metric = job.metric
    result = run_job(job, bar=progress_bar("compress"))
    write_report(job.run_dir)  # the single reductions' search, methods compared
    on_val = make_sweeper(job, "val", "results.jsonl")
    singles = [r for r in on_val.store.rows.values() if len(r["edits"]) == 1]
    base = on_val.done([])
    greedy = greedy_stack(stack_sweeper(on_val, job.run_dir), singles, base, metric, args.tolerance, layout, cache,
                          log=lambda m: print(m, file=sys.stderr))
    on_test = make_sweeper(job, "test", "test.jsonl")
    base_test, stack_test = on_test.evaluate([]), on_test.evaluate(greedy.stack)
    before = size_figures(loaded.model)
    figures = [test_figure(job, metric, base_test, stack_test, paired_test(base_test, stack_test, metric))]
    _export(loaded, greedy.stack, out / "model", layout, cache, save_dtype(args, loaded), command=command_line(args),
            figures=figures)
    reloaded = load_model(str(out / "model"), dtype=args.dtype, device=args.device)
    after = size_figures(reloaded.model, out / "model")
    summary = {"model": args.model, "task": args.task, "metric": metric, "tolerance": args.tolerance,
               "methods": job.methods, "types": job.types, "layers": [job.layers[0], job.layers[-1]],
               "amounts": [str(a) for a in job.amounts], "stack": [e.to_json() for e in greedy.stack],
               "stacks_tried": greedy.tried, "path": greedy.path,
               "base": {"val": base["metrics"], "test": base_test["metrics"], **before},
               "compressed": {"val": greedy.path[-1]["metrics"], "test": stack_test["metrics"],
                              "val_reloaded": _rescored(job, reloaded).score().metrics, **after,
                              **paired_test(base_test, stack_test, metric)},
               "search_seconds": round(result["seconds"], 1), "selection": result.get("selection")}
    (out / "compress.json").write_text(json.dumps(summary, indent=2) + "\n")
    report = write_compress_report(out, summary)
    b, c = summary["base"], summary["compressed"]
    print(f"stack of {len(greedy.stack)} reductions ({greedy.tried} stacks tried): "
          + " ".join(str(Edit.from_json(e)) for e in summary["stack"]))
    print(f"parameters {b['parameters']:,} -> {c['parameters']:,} ({100 * (1 - c['parameters'] / b['parameters']):.1f}% "
          f"fewer); val {metric} {b['val'][metric]:.4f} -> {c['val'][metric]:.4f}; test {metric} "
          f"{b['test'][metric]:.4f} -> {c['test'][metric]:.4f}; tokens/s {b['tokens_per_second']:.0f} -> "
          f"{c['tokens_per_second']:.0f}")
    print(f"model: {out / 'model'}  report: {report}")
    return 0


def register_compress(p):
    add_model_args(p)
    add_task_args(p, required=True)
    add_svd_args(p)
    add_calibration_args(p)
    add_save_dtype(p)
    p.add_argument("--types", help="matrix types or groups to reduce (default mlp: every MLP matrix; with --target "
                                   "mlp,attn: every matrix of the blocks)")
    p.add_argument("--layers", default="all", metavar="SPEC", help="layers: 20-27, 3,5,9 or all (default all)")
    p.add_argument("--rhos", metavar="R1,R2",
                   help="amounts (default 0.6,0.4,0.2,0.1,0.05,0.01: above ~0.7 the factors are no smaller)")
    p.add_argument("--methods", default="svd", help="methods, e.g. svd,cluster4 (default svd)")
    p.add_argument("--metric", metavar="M", help="the metric to keep (default: the task's primary)")
    p.add_argument("--tolerance", type=non_negative_float, metavar="T",
                   help="keep the val metric >= base - T (a loss <= base + T); default 0: never worse than the base")
    p.add_argument("--target", type=non_negative_float, metavar="F",
                   help="instead of --tolerance: keep at most F of the parameters (e.g. 0.8), ranks allocated by "
                        "calibration loss (methods svd, asvd, whiten), the allocation chosen on val")
    p.add_argument("--heldout", metavar="FILE",
                   help="with --target: a text for the held-out perplexity of base and compressed (default: the "
                        "shipped Declaration of Independence)")
    p.add_argument("--test-limit", type=positive_int, metavar="N", help="rows of test to use (default: --limit)")
    add_speed_args(p)
    add_select_args(p, "lcb")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="folder: search/ (the single reductions, resumable), stack.jsonl, model/ (the factorized "
                        "folder), compress.json, compress.md and compress.png")
    p.set_defaults(run=run_compress)
