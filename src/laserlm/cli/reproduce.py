"""`laser reproduce`: the paper's Table 1 protocol on each benchmark, one resumable search each, and table1.md."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..errors import UserError
from .options import (add_batch_args, add_model_args, add_svd_args, fit_task, load_from_args, output_dir, parse_amounts,
                      positive_int, scorer_for, svd_cache_from_args, task_identity, task_metrics)

PAPER_BENCHMARKS = ("counterfact", "hotpotqa", "fever", "bios_gender", "bios_profession", "truthfulqa",
                    "bb_epistemic", "bb_wikidata")
# Vendored, so offline; truthfulqa here is BIG-bench's question set, the paper's is the hub's (give --data-dir).
OFFLINE = ("bb_wikidata", "bb_epistemic", "truthfulqa", "truthfulqa_mc1")


def _data_file(data_dir: str | None, name: str) -> str | None:
    if not data_dir:
        return None
    for ext in (".jsonl", ".json", ".csv", ".parquet"):
        if (Path(data_dir) / f"{name}{ext}").is_file():
            return str(Path(data_dir) / f"{name}{ext}")
    return None


def run_reproduce(args) -> int:
    from ..analysis.report import write_report
    from ..analysis.table1 import write_table1
    from ..core.edits import parse_layers
    from ..core.layout import get_layout
    from ..evaluation.protocols import REPRODUCE_RHOS
    from ..evaluation.tasks import BUILTINS, load_task
    from ..search.job import (SearchJob, device_type, progress_bar, run_job, summary_lines, text_numerics,
                              text_splits)
    from ..search.sweep import PAPER_RHOS

    output_dir(args.output)
    names = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    for name in names:
        if name not in BUILTINS:
            raise UserError(f"unknown benchmark {name!r} in --benchmarks: use some of {', '.join(PAPER_BENCHMARKS)}")
    if args.data_dir and not Path(args.data_dir).is_dir():
        raise UserError(f"--data-dir {args.data_dir} is not a folder")
    default = PAPER_RHOS if args.figure_grid else REPRODUCE_RHOS
    amounts = parse_amounts(args.rhos, ["svd"]) if args.rhos else list(default)
    cache = svd_cache_from_args(args)
    loaded = load_from_args(args)
    layout = get_layout(loaded.model, args.module_pattern)
    layers = parse_layers(args.layers, f"--layers {args.layers}")
    layers = list(range(layout.n_layers)) if layers is None else list(layers)
    scorer = scorer_for(loaded, args)
    grid = (f"mlp_in, mlp_out; layers {'all' if args.layers == 'all' else args.layers}; "
            f"rho in {', '.join(f'{a:g}' for a in amounts)}")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    results, skipped = {}, {}
    t0 = time.perf_counter()
    for name in names:
        data = _data_file(args.data_dir, name)
        try:
            task = load_task(name, data, "paper")
        except UserError as e:  # a hub benchmark without its data: the others still run
            skipped[name] = str(e)
            print(f"laser: {name} skipped: {e}", file=sys.stderr)
            continue
        fit_task(task, loaded.tokenizer)
        val = task.select("val", 0, args.limit)
        test = task.select("test", 0, args.test_limit or args.limit)
        metrics = task_metrics(task, None, loaded, val + test)
        types = [t for t in ("mlp_in", "mlp_out") if t in layout.types]
        job = SearchJob(
            model=loaded.model, layout=layout, splits=text_splits(scorer, val, test, metrics, task.gen_tokens),
            metric=task.primary, run_dir=out / name, types=types, layers=layers,
            amounts=amounts, methods=["svd"], cache=cache, compose=args.compose,
            identity={"model": loaded.identity, "task": task_identity(name, data, "paper"), "split_seed": 0},
            numerics={"dtype": args.dtype, "svd": args.svd, "device": device_type(loaded.model),
                      **text_numerics(metrics, task.gen_tokens)},
            info={"protocol": "paper", "args": {"model": args.model, "task": name, "data": data, "limit": args.limit,
                                                "test_limit": args.test_limit or args.limit,
                                                "module_pattern": args.module_pattern, "protocol": "paper"}})
        print(f"== {name}", file=sys.stderr)
        result = run_job(job, bar=progress_bar(name))
        write_report(job.run_dir)
        results[name] = {**result, "n_val": len(val), "n_test": len(test)}
        print("\n".join(f"{name}: {line}" for line in summary_lines(result)))
        write_table1(out, args.model, results, skipped, time.perf_counter() - t0, grid)  # a partial table as we go
    if not results:
        raise UserError("no benchmark could run: give --data-dir with local copies of the hub benchmarks, or "
                        f"--benchmarks {','.join(OFFLINE)} (offline)")
    path = write_table1(out, args.model, results, skipped, time.perf_counter() - t0, grid)
    print(path.read_text())
    print(f"table: {path}")
    return 0


def register_reproduce(p):
    add_model_args(p)
    add_svd_args(p)
    add_batch_args(p)
    p.add_argument("--benchmarks", default=",".join(PAPER_BENCHMARKS), metavar="LIST",
                   help=f"comma-separated (default all eight; offline without --data-dir: {','.join(OFFLINE)})")
    p.add_argument("--data-dir", metavar="DIR",
                   help="folder with local copies of hub benchmarks, named BENCHMARK.jsonl/.json/.csv/.parquet "
                        "in the hub schema (e.g. fever.jsonl); the rest come from the hub")
    p.add_argument("--layers", default="all", metavar="SPEC", help="layers to sweep (default all, as the paper)")
    p.add_argument("--rhos", metavar="R1,R2",
                   help="fractions rho or k=K ranks; default the authors' BigBench grid 0.9,0.8,0.6,0.4,0.2,0.1,0.05,0.01,0.005 (it finds the "
                        "rho = 0.4 and 0.005 reported in the paper's Table 5)")
    p.add_argument("--figure-grid", action="store_true",
                   help="sweep only the seven rho of the paper's figures (0.9 ... 0.01)")
    p.add_argument("--limit", type=positive_int, metavar="N", help="use only the first N val rows (and test rows)")
    p.add_argument("--test-limit", type=positive_int, metavar="N", help="rows of test to use (default: --limit)")
    p.add_argument("--compose", action="store_true", help="also stack the best layers greedily (the paper's §5.1)")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="folder: one search run folder per benchmark, table1.md and table1.json")
    p.set_defaults(run=run_reproduce)


EXAMPLE = """laser reproduce demo --benchmarks bb_wikidata,bb_epistemic,truthfulqa --limit 500 -o runs/table1
laser reproduce EleutherAI/gpt-j-6b --dtype bfloat16 --data-dir ~/laser-data -o runs/gptj-table1"""
