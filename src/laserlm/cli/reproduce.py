"""`laser reproduce`: the paper's Table 1 protocol on each benchmark, one resumable search each, table1.md beside
the paper's figures, and the Figure-7 heatmap."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..errors import HubUnavailable, UserError
from .jobs import add_select_args, add_speed_args, check_speed_args, text_job
from .options import (add_batch_args, add_chat_arg, add_model_args, add_svd_args, fit_task, load_from_args, output_dir,
                      parse_rhos, positive_int, scorer_for, select_rows, svd_cache_from_args, task_metrics)

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


def benchmark_grid(args, model_type: str, name: str, n_layers: int) -> tuple[list[int], list, str]:
    """(layers, amounts, where they come from) for one benchmark: --layers/--rhos where given, else the grid."""
    from ..core.edits import parse_layers
    from ..evaluation.protocols import AUTHORS_GRIDS, REPRODUCE_RHOS
    from ..sweep.sweeper import PAPER_RHOS

    layers, amounts, source = list(range(n_layers)), list(REPRODUCE_RHOS), "every layer, the authors' nine rho"
    if args.grid == "figure":
        amounts, source = list(PAPER_RHOS), "every layer, the paper's seven rho"
    elif args.grid == "authors" and (model_type, name) in AUTHORS_GRIDS:
        pick, rhos, where = AUTHORS_GRIDS[(model_type, name)]
        layers, amounts, source = [i for i in pick(n_layers) if 0 <= i < n_layers], list(rhos), f"the authors' ({where})"
    if args.layers:
        chosen = parse_layers(args.layers, f"--layers {args.layers}")
        layers, source = list(range(n_layers)) if chosen is None else list(chosen), "--layers"
    if args.rhos:
        amounts, source = parse_rhos(args.rhos, ["svd"]), source + ", --rhos"
    return layers, amounts, source


def run_reproduce(args) -> int:
    from ..analysis.report import write_report
    from ..analysis.table1 import write_table1
    from ..core.layout import get_layout, model_type_of
    from ..evaluation.tasks import BUILTINS, load_task
    from ..sweep.job import progress_bar, run_job, summary_lines

    output_dir(args.output)
    check_speed_args(args)
    if args.figure_grid:
        args.grid = "figure"
    names = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    for name in names:
        if name not in BUILTINS:
            raise UserError(f"unknown benchmark {name!r} in --benchmarks: use some of {', '.join(PAPER_BENCHMARKS)}")
    if args.data_dir and not Path(args.data_dir).is_dir():
        raise UserError(f"--data-dir {args.data_dir} is not a folder")
    if args.rhos:
        parse_rhos(args.rhos, ["svd"])  # refused before the model loads
    cache = svd_cache_from_args(args)
    loaded = load_from_args(args)
    layout = get_layout(loaded.model, args.module_pattern)
    for layer in benchmark_grid(args, "", "", layout.n_layers)[0]:
        layout.target(layout.types[0], layer)  # a clear error for a layer out of range
    scorer = scorer_for(loaded, args)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    results, skipped = {}, {}
    t0 = time.perf_counter()
    for name in names:
        data = _data_file(args.data_dir, name)
        try:
            task = load_task(name, data, "paper")
        except HubUnavailable as e:  # a hub benchmark without its data: the others still run
            skipped[name] = f"{e}: put {name}.jsonl, a local copy in the hub schema, in --data-dir"
            print(f"laser: {name} skipped: {skipped[name]}", file=sys.stderr)
            continue
        fit_task(task, loaded.tokenizer)
        val = select_rows(task, "val", 0, args.limit, args, loaded.tokenizer)
        test = select_rows(task, "test", 0, args.test_limit or args.limit, args, loaded.tokenizer)
        layers, amounts, source = benchmark_grid(args, model_type_of(loaded.model), name, layout.n_layers)
        types = [t for t in ("mlp_in", "mlp_out") if t in layout.types]
        job = text_job(args, loaded=loaded, layout=layout, scorer=scorer, task=task, task_arg=name, data=data,
                       protocol="paper", val=val, test=test, metrics=task_metrics(task, None, loaded, val + test),
                       metric=task.primary, run_dir=out / name, types=types, layers=layers, amounts=amounts,
                       methods=["svd"], cache=cache, compose=args.compose)
        print(f"== {name}: {', '.join(types)}; layers {layers[0]}-{layers[-1]}; rho "
              f"{', '.join(f'{a:g}' if not isinstance(a, str) else a for a in amounts)} ({source})", file=sys.stderr)
        result = run_job(job, bar=progress_bar(name))
        write_report(job.run_dir)
        results[name] = {**result, "n_val": len(val), "n_test": len(test), "grid": source,
                         "layers": [layers[0], layers[-1]], "amounts": [str(a) for a in amounts]}
        print("\n".join(f"{name}: {line}" for line in summary_lines(result)))
        write_table1(out, args.model, results, skipped, time.perf_counter() - t0, layout.notes)  # partial, as we go
    if not results:
        raise UserError("no benchmark could run: give --data-dir with local copies of the hub benchmarks, or "
                        f"--benchmarks {','.join(OFFLINE)} (offline)")
    path = write_table1(out, args.model, results, skipped, time.perf_counter() - t0, layout.notes)
    print(path.read_text())
    print(f"table: {path}")
    return 0


def register_reproduce(p):
    add_model_args(p)
    add_svd_args(p)
    add_chat_arg(p)
    add_batch_args(p)
    p.add_argument("--benchmarks", default=",".join(PAPER_BENCHMARKS), metavar="LIST",
                   help=f"comma-separated (default all eight; offline without --data-dir: {','.join(OFFLINE)})")
    p.add_argument("--data-dir", metavar="DIR",
                   help="folder with local copies of hub benchmarks, named BENCHMARK.jsonl/.json/.csv/.parquet "
                        "in the hub schema (e.g. fever.jsonl); the rest come from the hub")
    p.add_argument("--grid", choices=["authors", "full", "figure"], default="authors",
                   help="authors (default): the grid the authors' scripts fix for this model family and benchmark "
                        "where they fix one (GPT-J BigBench: its last 11 layers; Llama-2 BigBench: its last 5 layers "
                        "and rho 0.2 ... 0.005; RoBERTa BigBench and HotPotQA: every layer but the first), else every "
                        "layer and their nine rho 0.9 ... 0.005 (which finds the rho = 0.4 and 0.005 of the paper's "
                        "Table 5); full: every layer and the nine rho everywhere; figure: every layer and the paper's "
                        "seven rho")
    p.add_argument("--layers", metavar="SPEC", help="layers to sweep, for every benchmark (overrides --grid)")
    p.add_argument("--rhos", metavar="R1,R2", help="fractions rho or k=K ranks, for every benchmark (overrides --grid)")
    p.add_argument("--figure-grid", action="store_true", help="the same as --grid figure")
    p.add_argument("--limit", type=positive_int, metavar="N", help="use only the first N val rows (and test rows)")
    p.add_argument("--test-limit", type=positive_int, metavar="N", help="rows of test to use (default: --limit)")
    p.add_argument("--compose", action="store_true", help="also stack the best layers greedily (the paper's §5.1)")
    add_speed_args(p)
    add_select_args(p, "paper")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="folder: one search run folder per benchmark, table1.md, table1.json and figure7.png")
    p.set_defaults(run=run_reproduce)


EXAMPLE = """laser reproduce demo --benchmarks bb_wikidata,bb_epistemic,truthfulqa --limit 500 -o runs/table1
laser reproduce demo --benchmarks bb_wikidata,bb_epistemic --halving --limit 500 -o runs/table1-fast
laser reproduce EleutherAI/gpt-j-6b --dtype bfloat16 --data-dir ~/laser-data -o runs/gptj-table1
laser reproduce meta-llama/Llama-2-7b-hf --backend ray --gpus-per-worker 1 --data-dir ~/laser-data -o runs/l2"""
