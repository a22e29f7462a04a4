"""`laser search`: sweep (type, layer, rho) on val, select, report val and test."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .jobs import add_select_args, add_speed_args, check_speed_args, task_search
from .options import (add_calibration_args, add_model_args, add_svd_args, add_task_args, load_from_args, output_dir, parse_rhos,
                      positive_int, svd_cache_from_args)

EXAMPLE = """laser search demo -t bb_wikidata --layers 22-29 --rhos 0.1,0.01 --limit 150 -o runs/wiki
laser search demo -t bb_wikidata --layers 15-29 --compose -o runs/wiki-full
laser search gpt2 -t rows.jsonl --types mlp,attn_o --rhos 0.5,k=8 --methods svd,prune -o runs/mine
laser search runs/vit-digits-p4/model --objective examples/vit_classifier.py:objective --types mlp -o runs/vit-cli"""


def _objective_search(args) -> int:
    """--objective FILE.py:FUNC: the public API's search, on the model MODEL names."""
    from ..api import search
    from ..models.python import load_attr
    from ..sweep.job import summary_lines
    from ..sweep.sweeper import PAPER_RHOS

    given = [flag for flag, value in (("--limit", args.limit), ("--test-limit", args.test_limit),
                                      ("--data", args.data), ("--lm-eval-include", args.lm_eval_include))
             if value is not None] + (["--backend ray"] if args.backend == "ray" else [])
    given += ["--halving"] if args.halving else []
    given += [f"--prescreen {args.prescreen}"] if args.prescreen in ("grad", "grad-matrix") else []
    if given:
        raise UserError(f"{', '.join(given)} belong to -t TASK: an --objective chooses its own rows and runs here")
    objective = load_attr(args.objective, "--objective")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    amounts = parse_rhos(args.rhos or ",".join(map(str, PAPER_RHOS)), methods)
    cache = svd_cache_from_args(args)
    loaded = load_from_args(args)
    result = search(loaded.model, objective, run_dir=args.output, types=args.types, layers=args.layers,
                    rhos=amounts, methods=methods,
                    compose=args.compose, module_patterns=args.module_pattern, metric=args.metric,
                    higher_is_better=False if args.minimize else None, model_id=args.model, cache=cache,
                    prescreen=args.prescreen, budget=args.budget, select=args.select,
                    alpha=args.alpha)
    print("\n".join(summary_lines(result)))
    print(f"report: {Path(args.output) / 'report.md'}")
    return 0


def run_search(args) -> int:
    from ..analysis.report import write_report
    from ..sweep.job import progress_bar, run_job, summary_lines
    from ..sweep.sweeper import PAPER_RHOS

    if (args.task is None) == (args.objective is None):
        raise UserError("laser search needs one of -t TASK or --objective FILE.py:FUNC")
    check_speed_args(args)
    output_dir(args.output)
    if args.objective:
        return _objective_search(args)
    if args.minimize:
        raise UserError("--minimize is for an --objective's metric; a task's metrics have known directions")
    job, *_ = task_search(args, PAPER_RHOS, Path(args.output))
    result = run_job(job, bar=progress_bar())
    report = write_report(job.run_dir)
    print("\n".join(summary_lines(result)))
    print(f"report: {report}")
    return 0


def register_search(p):
    add_model_args(p)
    add_task_args(p, required=False)
    p.add_argument("--objective", metavar="FILE.py:FUNC",
                   help="instead of -t: FUNC(model, split) -> {metric: float} scores the model as edited at "
                        "that moment on 'val' or 'test' (a laserlm.Objective, or a plain function with --metric). "
                        "MODEL may then be FILE.py:FACTORY too, a function returning any torch module; address its "
                        "matrices with --module-pattern if it is not in the architecture table")
    p.add_argument("--minimize", action="store_true",
                   help="with --objective: the --metric is a loss, lower is better (default: higher is better)")
    add_svd_args(p)
    add_calibration_args(p)
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
    add_speed_args(p)
    add_select_args(p, "lcb")
    p.add_argument("-o", "--output", required=True, metavar="RUN_DIR",
                   help="run folder: results.jsonl (append-only, fsynced), best.json, report.md, plots")
    p.set_defaults(run=run_search)
