"""What `laser search -t TASK` and `laser reproduce` share: the speed options (successive halving, a prescreen with
a budget, the Ray backend) and a text search job built from the command's arguments. Heavy imports happen inside
functions."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import UserError
from .options import int_at_least, non_negative_float, positive_int


def add_speed_args(p) -> None:
    p.add_argument("--halving", nargs="?", const=3, type=int_at_least(2, "ETA"), metavar="ETA",
                   help="successive halving over val rows: score every candidate on a first slice of val, keep "
                        "the best 1/ETA (default 3), double the rows, repeat until the survivors have seen all "
                        "of val (their rows go to results.jsonl, partial scores to halving.jsonl). Several "
                        "times faster; the risk: a candidate weak on the first slice is never seen on all of val")
    p.add_argument("--prescreen", choices=["mp", "snr", "grad", "grad-matrix"],
                   help="rank the candidates before any evaluation, for --budget: mp (share of the removed energy "
                        "under the Marchenko-Pastur edge), snr (matrices by signal-to-noise ratio, lowest first), "
                        "grad (first-order change of the val loss from one backward pass on --grad-rows val rows; "
                        "any method, clustered ones included), grad-matrix (matrices ranked by the gradient of their "
                        "singular values, the follow-up paper's selection: --budget counts matrices, and every "
                        "candidate of the best ones is evaluated)")
    p.add_argument("--budget", type=positive_int, metavar="N",
                   help="with --prescreen: evaluate only the N best-ranked candidates, or with grad-matrix the "
                        "candidates of the N best matrices (prescreen.json keeps the ranking). The risk: the best "
                        "edit may be among those never evaluated")
    p.add_argument("--grad-rows", type=positive_int, default=32, metavar="N",
                   help="val rows of --prescreen grad/grad-matrix's backward pass (default 32; the follow-up uses 100)")
    p.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local: this process. ray: candidates grouped by layer on Ray actors (pip install "
                        "'laserlm[ray]'); the cluster at --ray-address or $RAY_ADDRESS, else a local Ray")
    p.add_argument("--ray-address", metavar="ADDR", help="Ray cluster address (default $RAY_ADDRESS, else local)")
    p.add_argument("--workers", type=positive_int, metavar="N", help="Ray actors (default: one per available CPU)")
    p.add_argument("--gpus-per-worker", type=non_negative_float, metavar="G",
                   help="GPUs each Ray actor asks for, fractional allowed (default 0: CPU workers)")


def _alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise UserError(f"--alpha {text}: give a level between 0 and 1, e.g. 0.05")
    return value


def add_select_args(p, default: str) -> None:
    """--select and --alpha: how the pick is made among the candidates, and the verdict's level."""
    p.add_argument("--select", choices=["best", "lcb", "shrink", "paper"], default=default,
                   help="the selection rule: best (the val argmax), lcb (the highest 95%% lower confidence bound of "
                        "the paired val gain), shrink (the highest empirical-Bayes gain, shrunk toward its layer's "
                        "mean); the base model is a candidate of all three, so the pick is never worse than it on "
                        "val. paper: the paper's argmax over edits only. Default: " + default + (
                            " (the paper's protocol)" if default == "paper" else
                            " (in benchmarks/selection.py's simulations its regret is argmax's or less, and far "
                            "less where most edits are harmful)"))
    p.add_argument("--alpha", type=_alpha, default=0.05, metavar="A",
                   help="level of the verdict: an edit is called a gain when the family-wise p-value that some "
                        "candidate beats the base, over all K candidates, is below A (default 0.05)")


def check_speed_args(args) -> None:
    """Combinations refused before any work."""
    if args.backend == "ray":
        from ..sweep.ray_backend import _import_ray

        _import_ray()
    elif args.ray_address or args.workers or args.gpus_per_worker:
        raise UserError("--ray-address, --workers and --gpus-per-worker need --backend ray")
    if args.halving and args.backend == "ray":
        raise UserError("--halving runs here: drop --backend ray, or --halving")
    if (args.prescreen is None) != (args.budget is None):
        raise UserError("--prescreen ranks the candidates and --budget N keeps the best N: give both")


def _absolute(path: str | None) -> str | None:
    """Workers may run elsewhere: a path that exists here travels as an absolute path."""
    return str(Path(path).expanduser().resolve()) if path and Path(path).expanduser().exists() else path


def _dtype_name(model) -> str:
    """The dtype the weights were loaded in (what --dtype auto chose): what the results depend on."""
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def ray_sweep(args, layout, task: str, data: str | None, run_dir: Path, protocol: str):
    """The Ray backend, as the job's sweep: the driver evaluates the base row, the workers the rest."""
    from ..sweep.ray_backend import WorkerSpec, ray_sweep as sweep_on_ray

    def sweep(on_val, pending, on_done):
        spec = WorkerSpec(model=_absolute(args.model), task=_absolute(task), task_identity=on_val.context["task"],
                          dtype=_dtype_name(layout.model), device=args.device, revision=args.revision,
                          module_patterns=args.module_pattern, data=_absolute(data),
                          split_seed=getattr(args, "split_seed", 0), limit=args.limit, batch_size=args.batch_size,
                          max_tokens=args.max_tokens, svd=args.svd, seed=args.seed, svd_disk=not args.no_svd_cache,
                          protocol=protocol, lm_eval_include=_absolute(getattr(args, "lm_eval_include", None)),
                          metrics=on_val.context["metrics"], gen_tokens=on_val.context["gen_tokens"],
                          min_new_tokens=on_val.context.get("min_new_tokens", 0),
                          log=str(Path(run_dir).resolve() / "workers.log"))
        sweep_on_ray(spec, pending, on_val.store, layout.n_layers, context=on_val.context, workers=args.workers,
                     gpus_per_worker=args.gpus_per_worker or 0.0, address=args.ray_address, on_done=on_done)

    return sweep


def text_job(args, *, loaded, layout, scorer, task, task_arg: str, data: str | None, protocol: str, val, test,
             metrics, metric: str, run_dir: Path, types, layers, amounts, methods, cache, compose: bool,
             split_seed: int = 0):
    """One search over text rows, with the speed options of `args`: the job `laser search -t` runs, and
    `laser reproduce` once per benchmark."""
    from .options import task_identity
    from ..sweep.job import SearchJob, device_type, text_numerics, text_splits

    # With Ray GPU workers the candidates run on CUDA (unless --device cpu), whatever this driver has.
    ray_gpus = args.backend == "ray" and args.gpus_per_worker and args.device != "cpu"
    return SearchJob(
        model=loaded.model, layout=layout, splits=text_splits(scorer, val, test, metrics, task.gen()),
        metric=metric, run_dir=Path(run_dir), types=types, layers=layers, amounts=amounts, methods=methods,
        cache=cache, compose=compose,
        identity={"model": loaded.identity, "task": task_identity(task_arg, data, protocol), "split_seed": split_seed},
        numerics={"dtype": _dtype_name(loaded.model), "svd": cache.label, "device": "cuda" if ray_gpus else device_type(loaded.model),
                  **text_numerics(metrics, task.gen()), **calibration_numerics(args, methods)},
        info={"protocol": task.protocol,
              "args": {"model": args.model, "task": task_arg, "data": data, "limit": args.limit,
                       "test_limit": args.test_limit or args.limit, "module_pattern": args.module_pattern,
                       "protocol": protocol}},
        sweep=ray_sweep(args, layout, task_arg, data, run_dir, protocol) if args.backend == "ray" else None,
        halving=args.halving, prescreen=args.prescreen, budget=args.budget, grad_rows=args.grad_rows,
        select=getattr(args, "select", "lcb"), alpha=getattr(args, "alpha", 0.05))


def calibration_skip(args) -> int:
    """Val rows the calibration leaves out: with --calibration TASK on the task the run scores, the first --limit
    rows (those it scores), so that val stays unseen; all of them scored (no --limit) is refused."""
    source, task = getattr(args, "calibration", None), getattr(args, "task", None)
    if source is None or source != task or getattr(args, "split", None) == "test":
        return 0
    if getattr(args, "limit", None) is None:
        raise UserError(f"calibration on {source}, the task the run scores: give --limit N, and the calibration "
                        "takes the val rows past the first N (those scored), so val stays unseen")
    return int(args.limit)


def calibration_numerics(args, methods) -> dict:
    """What data-aware candidates' scores depend on (absent otherwise, so earlier runs' keys stay valid)."""
    from ..evaluation.calibration import calibration_identity
    from .options import needs_calibration

    if not needs_calibration(methods=methods):
        return {}
    return {"calibration": calibration_identity(getattr(args, "calibration", None),
                                                getattr(args, "calibration_tokens", None), calibration_skip(args))}


def calibrate_grid(args, loaded, layout, methods, types, layers) -> None:
    """The calibration statistics every data-aware candidate of the grid needs, gathered once before the sweep."""
    from ..core.edits import Edit
    from .options import calibrate_from_args, needs_calibration

    if needs_calibration(methods=methods):
        if args.backend == "ray":
            raise UserError("whiten/ and asvd/ candidates run here: drop --backend ray for them")
        data_aware = [m for m in methods if needs_calibration(methods=[m])]
        calibrate_from_args(args, loaded, layout, [Edit(m, t, i, 0.5) for m in data_aware for t in types
                                                  for i in layers], calibration_skip(args))


def task_search(args, default_rhos, run_dir: Path):
    """What `laser search -t` and `laser compress` both build from their arguments: the task, its metric, the
    model, the grid (--types, --layers, --rhos, --methods) checked against the model, and the search job.
    Returns (job, loaded, layout, cache); bad input is refused before the model loads where it can be."""
    from ..core.edits import parse_layers
    from ..core.layout import get_layout
    from ..evaluation.metrics import PRIMARY, choose_metrics
    from .options import (fit_task, load_from_args, parse_rhos, scorer_for, select_rows, svd_cache_from_args,
                          task_from_args, task_metrics)

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    amounts = parse_rhos(args.rhos or ",".join(map(str, default_rhos)), methods)
    calibration_skip(args)  # a calibration that would see the scored val rows is refused before any work
    task = task_from_args(args)
    metric = args.metric or task.primary or PRIMARY[task.kind]
    choose_metrics(task.kind, [metric], True)  # an unknown or unfit --metric is refused before any work
    cache = svd_cache_from_args(args)
    loaded = load_from_args(args)
    fit_task(task, loaded.tokenizer)
    val = select_rows(task, "val", args.split_seed, args.limit, args, loaded.tokenizer)
    test = select_rows(task, "test", args.split_seed, args.test_limit or args.limit, args, loaded.tokenizer)
    layout = get_layout(loaded.model, args.module_pattern)
    types = layout.expand_type_list(args.types)
    layers = parse_layers(args.layers, f"--layers {args.layers}")
    layers = list(range(layout.n_layers)) if layers is None else list(layers)
    for layer in layers:
        layout.target(types[0], layer)  # a clear error for a layer out of range
    calibrate_grid(args, loaded, layout, methods, types, layers)
    job = text_job(args, loaded=loaded, layout=layout, scorer=scorer_for(loaded, args), task=task, task_arg=args.task,
                   data=args.data, protocol=args.protocol, val=val, test=test,
                   metrics=task_metrics(task, None, loaded, val + test, also=metric), metric=metric, run_dir=run_dir,
                   types=types, layers=layers, amounts=amounts, methods=methods, cache=cache,
                   compose=getattr(args, "compose", False), split_seed=args.split_seed)
    return job, loaded, layout, cache


def _export(loaded, stack, folder: Path, layout, cache, dtype=None, **card) -> None:
    """The factorized folder of the stack, written beside and renamed into place (a kill never leaves half)."""
    from ..models.export import export
    from ..models.factorized import read_recipe

    recipe = read_recipe(folder) if folder.is_dir() else None
    if recipe and recipe["edits"] == [e.to_json() for e in stack]:
        return
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    export(loaded, stack, tmp, factorized=True, layout=layout, svd_cache=cache, save_dtype=dtype, **card)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def _rescored(job, reloaded):
    """The val rows of the job, prepared for the folder as laserlm loads it."""
    from ..evaluation.evaluate import Prepared
    from ..evaluation.scoring import Scorer

    val = job.splits["val"].scoring
    return Prepared(Scorer(reloaded.model, reloaded.tokenizer, val.scorer.batch_size, val.scorer.max_tokens),
                    val.examples, val.metrics, val.gen)


def test_figure(job, metric: str, base: dict, edited: dict, paired: dict) -> dict:
    """The model card's test row: base and edited on the job's test rows, with the paired difference and interval."""
    return {"split": "test", "metric": metric, "base": base["metrics"][metric], "edited": edited["metrics"][metric],
            "difference": paired.get("test_diff"), "interval": paired.get("test_ci"), "rows": job.splits["test"].rows["n"]}
