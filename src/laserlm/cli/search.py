"""`laser search`: sweep (type, layer, rho) on val, select, report val and test."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

from ..errors import UserError
from .options import (add_model_args, add_svd_args, add_task_args, load_from_args, output_dir, positive_int, rows_for,
                      scorer_for, svd_cache_from_args, task_from_args, task_metrics)

EXAMPLE = """laser search demo -t bb_wikidata --layers 22-29 --rhos 0.1,0.01 --limit 150 -o runs/wiki
laser search demo -t bb_wikidata --layers 15-29 --compose -o runs/wiki-full
laser search gpt2 -t rows.jsonl --types mlp,attn_o --rhos 0.5,k=8 --methods svd,prune -o runs/mine"""


def _task_identity(args) -> str:
    from ..evaluation.tasks import BUILTINS

    if args.task in BUILTINS and not args.data:
        return args.task if args.protocol == "paper" else f"{args.task} --protocol {args.protocol}"
    path = Path(args.data or args.task).expanduser()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else "?"
    return f"{args.task}" + (f" --data {path.name}" if args.data else "") + f" ({digest})"


def parse_amounts(text: str, methods: list[str]) -> list:
    """Amounts as the most permissive swept method reads them (rank methods also take k=K)."""
    from ..core.edits import parse_amount
    from ..core.methods import get_method

    kinds = {m: get_method(m).amount for m in methods}
    reader = next((m for m in methods if kinds[m] == "rank"), next((m for m in methods if kinds[m] != "none"), None))
    if reader is None:
        return [None]
    return [parse_amount(part.strip(), reader, f"--rhos {text}") for part in text.split(",") if part.strip()]


def _check_backend(args) -> None:
    if args.backend == "ray":
        from ..search.ray_backend import _import_ray

        _import_ray()
    elif args.ray_address or args.workers or args.gpus_per_worker:
        raise UserError("--ray-address, --workers and --gpus-per-worker need --backend ray")
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1, not {args.workers}")


def _absolute(path: str | None) -> str | None:
    """Workers may run elsewhere: a path that exists here travels as an absolute path."""
    return str(Path(path).expanduser().resolve()) if path and Path(path).expanduser().exists() else path


def _sweep(args, on_val, candidates, layout, bar) -> None:
    if args.backend == "local":
        on_val.sweep(candidates, on_done=lambda row: bar.update(1))
        return
    from ..search.ray_backend import WorkerSpec, ray_sweep

    on_val.sweep([])  # the base model, here on the driver
    spec = WorkerSpec(model=_absolute(args.model), task=_absolute(args.task), task_identity=on_val.context["task"],
                      dtype=args.dtype, device=args.device, revision=args.revision,
                      module_patterns=args.module_pattern, data=_absolute(args.data), split_seed=args.split_seed,
                      limit=args.limit, batch_size=args.batch_size, max_tokens=args.max_tokens, svd=args.svd,
                      svd_disk=not args.no_svd_cache, protocol=args.protocol,
                      metrics=on_val.context["metrics"], gen_tokens=on_val.context["gen_tokens"])
    pending = [c for c in candidates if on_val.done([c]) is None]
    ray_sweep(spec, pending, on_val.store, layout.n_layers, context=on_val.context, workers=args.workers,
              gpus_per_worker=args.gpus_per_worker or 0.0, address=args.ray_address,
              on_done=lambda row: bar.update(1))


def run_search(args) -> int:
    from tqdm import tqdm

    from ..core.layout import get_layout
    from ..core.edits import Edit, parse_layers
    from ..evaluation.evaluate import Prepared
    from ..analysis.report import write_report
    from ..evaluation.metrics import PRIMARY, choose_metrics
    from ..search.sweep import PAPER_RHOS, Sweeper, best_row, compose, grid
    from ..search.store import ResultStore, check_manifest, rows_hash

    _check_backend(args)
    output_dir(args.output)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    amounts = parse_amounts(args.rhos or ",".join(map(str, PAPER_RHOS)), methods)
    task = task_from_args(args)
    primary = args.metric or task.primary or PRIMARY[task.kind]
    choose_metrics(task.kind, [primary], True)  # an unknown or unfit --metric is refused before any work
    cache = svd_cache_from_args(args)
    loaded = load_from_args(args)
    val = rows_for(task, "val", args, loaded.tokenizer, args.limit)
    test = rows_for(task, "test", args, loaded.tokenizer, args.test_limit or args.limit)
    metrics = task_metrics(task, None, loaded, val + test, also=primary)
    layout = get_layout(loaded.model, args.module_pattern)
    types = layout.expand_type_list(args.types)
    layers = parse_layers(args.layers, f"--layers {args.layers}")
    layers = list(range(layout.n_layers)) if layers is None else list(layers)
    for layer in layers:
        layout.target(types[0], layer)  # a clear error for a layer out of range
    candidates = grid(types, layers, amounts, methods)

    run_dir = Path(args.output)
    # What a stored number depends on besides the edits: a rerun that differs in any of these is refused.
    # With Ray GPU workers the candidates run on CUDA (unless --device cpu), whatever this driver has.
    ray_gpus = args.backend == "ray" and args.gpus_per_worker and args.device != "cpu"
    device = "cuda" if ray_gpus else _device_type(loaded.model)
    # The metrics computed are part of a result's identity; the one selected on may change between reruns.
    numerics = {"dtype": args.dtype, "svd": args.svd, "device": device, "metrics": sorted(m.name for m in metrics),
                "gen_tokens": task.gen_tokens}
    manifest = {"model": loaded.identity, "task": _task_identity(args), "split_seed": args.split_seed,
                "val_rows": {"n": len(val), "hash": rows_hash(val)},
                "test_rows": {"n": len(test), "hash": rows_hash(test)}, **numerics}
    check_manifest(run_dir, manifest, {"types": types, "layers": layers, "amounts": amounts, "methods": methods},
                   {"metric": primary, "protocol": task.protocol,
                    "args": {"model": args.model, "task": args.task, "data": args.data, "limit": args.limit,
                             "test_limit": args.test_limit or args.limit, "module_pattern": args.module_pattern,
                             "protocol": args.protocol}})
    scorer = scorer_for(loaded, args)
    # Each row set is encoded and packed once, whichever store its results go to.
    prepared = {split: (Prepared(scorer, rows, metrics, task.gen_tokens), rows_hash(rows))
                for split, rows in (("val", val), ("test", test))}

    def sweeper(split, store_name):
        rows, digest = prepared[split]
        context = {"model": loaded.identity, "task": manifest["task"], "rows": digest, **numerics}
        return Sweeper(loaded.model, layout, rows, ResultStore(run_dir / store_name), context, split, cache)

    t0 = time.perf_counter()
    on_val = sweeper("val", "results.jsonl")
    todo = sum(on_val.done([c]) is None for c in candidates)
    print(f"{len(candidates)} candidates ({len(candidates) - todo} already done), {len(val)} val rows, "
          f"{len(test)} test rows -> {run_dir}", file=sys.stderr)
    with tqdm(total=todo, unit="cand", desc="search", dynamic_ncols=True, file=sys.stderr) as bar:
        _sweep(args, on_val, candidates, layout, bar)
    sweep_secs = time.perf_counter() - t0
    base = on_val.done([])
    rows = [r for r in on_val.store.rows.values() if r["split"] == "val"]
    best = best_row(rows, primary)
    on_test = sweeper("test", "test.jsonl")
    result = {"metric": primary, "base": _summary([], base, on_test.evaluate([]), primary)}
    best_edits = [Edit.from_json(e) for e in best["edits"]] if best else []
    result["best"] = _summary(best_edits, best or base, on_test.evaluate(best_edits), primary)
    if best_edits:  # the data-free baseline on the same matrix: keep what clears the Marchenko-Pastur edge
        mp = [Edit("mp", best_edits[0].type, best_edits[0].layer)]
        baselines = sweeper("val", "baselines.jsonl")  # kept out of results.jsonl, which selection reads
        result["mp"] = _summary(mp, baselines.evaluate(mp), on_test.evaluate(mp), primary)
    if args.compose:
        on_compose = sweeper("val", "composed.jsonl")
        stack, row = compose(on_compose, rows, base, primary, log=lambda m: print(m, file=sys.stderr))
        result["composed"] = _summary(stack, row, on_test.evaluate(stack), primary)
    (run_dir / "best.json").write_text(json.dumps(result, indent=2) + "\n")
    report = write_report(run_dir)
    _print_summary(result, primary, sweep_secs, todo)
    print(f"report: {report}")
    return 0


def _device_type(model) -> str:
    """cpu, cuda, or 'map' for a model spread by a device map (its numbers match the single-device run's
    up to the kernels of each device)."""
    types = {p.device.type for p in model.parameters()} - {"meta"}
    return types.pop() if len(types) == 1 else "map"


def _summary(edits, val_row: dict, test_row: dict, primary: str) -> dict:
    return {"edits": [e.to_json() for e in edits], "val": val_row["metrics"].get(primary),
            "test": test_row["metrics"].get(primary), "val_metrics": val_row["metrics"],
            "test_metrics": test_row["metrics"]}


def _print_summary(result: dict, primary: str, secs: float, n: int) -> None:
    from ..core.edits import Edit

    print(f"swept {n} candidates in {secs:.1f} s")
    for name in ("base", "best", "mp", "composed"):
        if name in result:
            r = result[name]
            edits = " ".join(str(Edit.from_json(e)) for e in r["edits"]) or "(no edit)"
            print(f"{name:9s} val {primary} {r['val']:.4f}  test {primary} {r['test']:.4f}  {edits}")


def register_search(p):
    add_model_args(p)
    add_task_args(p, required=True)
    add_svd_args(p)
    p.add_argument("--types", default="mlp_in,mlp_out",
                   help="matrix types or groups to sweep (default mlp_in,mlp_out, as in the paper)")
    p.add_argument("--layers", default="all", metavar="SPEC", help="layers: 20-27, 3,5,9 or all (default all)")
    p.add_argument("--rhos", metavar="R1,R2",
                   help="amounts: fractions rho or k=K ranks (default the paper's 0.9,0.8,0.6,0.2,0.1,0.05,0.01)")
    p.add_argument("--methods", default="svd", help="edit methods to sweep, e.g. svd,prune (default svd)")
    p.add_argument("--metric", metavar="M",
                   help="select (and --compose) on this metric, among the task's (logloss and choice_logloss "
                        "minimised, the others maximised; ties broken by the other metrics). Default: the "
                        "protocol's (gen01_paper for bb_wikidata and hotpotqa, top1 for counterfact, acc for "
                        "choice tasks), top1 or acc for custom files. Generation metrics (gen01, gen01_paper) "
                        "cost one batched generate() of --gen-tokens tokens per row and candidate: several times "
                        "a scoring pass")
    p.add_argument("--test-limit", type=positive_int, metavar="N", help="rows of test to use (default: --limit)")
    p.add_argument("--compose", action="store_true",
                   help="greedily stack each layer's best edit, layers ordered by val gain, while val improves")
    p.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local: this process. ray: candidates grouped by layer on Ray actors (pip install "
                        "'laserlm[ray]'); the cluster at --ray-address or $RAY_ADDRESS, else a local Ray")
    p.add_argument("--ray-address", metavar="ADDR", help="Ray cluster address (default $RAY_ADDRESS, else local)")
    p.add_argument("--workers", type=int, metavar="N", help="Ray actors (default: one per available CPU)")
    p.add_argument("--gpus-per-worker", type=float, metavar="G",
                   help="GPUs each Ray actor asks for, fractional allowed (default 0: CPU workers)")
    p.add_argument("-o", "--output", required=True, metavar="RUN_DIR",
                   help="run folder: results.jsonl (append-only, fsynced), best.json, report.md, plots")
    p.set_defaults(run=run_search)
