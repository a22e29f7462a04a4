"""`laser eval`: metrics of a model, edited for the evaluation only, on a task or a text file."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..errors import UserError
from .jobs import calibration_skip
from .options import (add_edit_args, add_model_args, add_task_args, calibrate_from_args, fit_task, lm_eval_include,
                      load_from_args, select_rows,
                      output_file, positive_int, print_metrics, read_text, scorer_for, svd_cache_from_args,
                      task_from_args, task_metrics)


def _prompt_ids(scorer, ex) -> list[int]:
    from ..evaluation.evaluate import _pair

    return _pair(scorer, ex.prompt, ex.choices[0] if ex.choices else " " + ex.answers[0])[0]


def _run_harness(args) -> int:
    """`--lm-eval`: lm-eval's own evaluation of the in-memory model; with edits, of the base model too, and
    the difference per task and metric (what the edit costs elsewhere)."""
    from ..core.edits import edited, edits_of, plan
    from ..core.layout import get_layout
    from ..evaluation.harness import flat_metrics, import_lm_eval, run_harness

    if args.task or args.text:
        raise UserError("--lm-eval runs harness tasks alone: drop -t/--text, or run them in another laser eval")
    output_file(args.json, "--json")
    import_lm_eval()
    include = lm_eval_include(args)
    names = [n.strip() for n in args.lm_eval.split(",") if n.strip()]
    cache = svd_cache_from_args(args)
    loaded = load_from_args(args)
    if loaded.tokenizer is None:
        raise UserError("this model has no tokenizer: lm-eval needs one next to the weights")
    layout = get_layout(loaded.model, args.module_pattern)
    calibrate_from_args(args, loaded, layout, args.edit)
    steps = plan(loaded.model, args.edit, layout)

    def harness():
        return run_harness(loaded.model, loaded.tokenizer, names, include=include, limit=args.limit,
                           num_fewshot=args.num_fewshot, chat_template=args.chat_template,
                           batch_size=args.batch_size)

    t0 = time.perf_counter()
    base = harness() if steps else None
    with edited(loaded.model, edits_of(steps), layout=layout, svd_cache=cache):
        result = harness()
    secs = time.perf_counter() - t0
    after = flat_metrics(result)
    edits = [e.to_json() for e in edits_of(steps)]
    if base is None:
        print_metrics(f"{args.model} on lm-eval {', '.join(names)} (limit {args.limit}), {secs:.1f} s", after)
    else:
        before = flat_metrics(base)
        _print_cost(f"{args.model}: base against {' '.join(str(s.edit) for s in steps)}, lm-eval, {secs:.1f} s",
                    before, after)
    if args.json:
        doc = {"model": args.model, "task": "lm-eval:" + ",".join(names), "split": "lm-eval", "n": args.limit,
               "edits": edits, "metrics": after, "lm_eval": result, "seconds": round(secs, 3)}
        if base is not None:
            doc.update(base_metrics=flat_metrics(base), lm_eval_base=base,
                       difference={k: after[k] - v for k, v in flat_metrics(base).items() if k in after})
        Path(args.json).write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return 0


def _print_cost(title: str, before: dict, after: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("task/metric", "base", "edited", "difference")
    for k in before:
        if k in after:
            table.add_row(k, f"{before[k]:.4f}", f"{after[k]:.4f}", f"{after[k] - before[k]:+.4f}")
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(title)
    console.print(table)


def run_eval(args) -> int:
    from tqdm import tqdm

    from ..core.layout import get_layout
    from ..core.edits import edited, edits_of, plan
    from ..evaluation.evaluate import evaluate, perplexity
    from ..evaluation.metrics import choose_metrics

    if args.lm_eval:
        return _run_harness(args)
    if not args.task and not args.text:
        raise UserError("name a task with -t TASK, --lm-eval TASKS, or a text file with --text FILE for perplexity")
    output_file(args.json, "--json")
    output_file(args.predictions, "--predictions")
    if args.stride > args.window:
        raise UserError(f"--stride {args.stride} exceeds --window {args.window}: the windows would skip tokens")
    text = read_text(args.text, "--text") if args.text else None
    task = task_from_args(args) if args.task else None
    names = [m for m in (args.metrics or "").split(",") if m]
    if task:
        choose_metrics(task.kind, names, True)  # a bad --metrics is refused before the model loads
    cache = svd_cache_from_args(args)
    loaded = load_from_args(args)
    if task:
        fit_task(task, loaded.tokenizer)
    examples = select_rows(task, args.split, args.split_seed, args.limit, args, loaded.tokenizer) if task else None
    metrics = task_metrics(task, names, loaded, examples) if task else None
    layout = get_layout(loaded.model, args.module_pattern)
    calibrate_from_args(args, loaded, layout, args.edit, calibration_skip(args) if task else 0)
    steps = plan(loaded.model, args.edit, layout)
    scorer = scorer_for(loaded, args)
    t0 = time.perf_counter()
    with edited(loaded.model, edits_of(steps), layout=layout, svd_cache=cache):
        out: dict[str, float] = {}
        result = None
        if task:
            with tqdm(total=None, unit="seq", disable=not sys.stderr.isatty(), leave=False) as bar:
                result = evaluate(scorer, examples, metrics, gen_tokens=task.gen(args.gen_tokens),
                                  progress=bar.update)
            out.update(result.metrics)
        if text is not None:
            out.update(perplexity(scorer, text, window=args.window, stride=args.stride))
    secs = time.perf_counter() - t0
    edits = [e.to_json() for e in edits_of(steps)]
    title = (f"{args.model} on {args.task or args.text} ({args.split}, n={result.n if result else '-'}), "
             f"{len(edits)} edits, {secs:.1f} s")
    print_metrics(title, out)
    if args.json:
        doc = {"model": args.model, "task": args.task or args.text, "split": args.split,
               "n": result.n if result else out.get("tokens"), "edits": edits, "metrics": out,
               "seconds": round(secs, 3), "split_seed": args.split_seed,
               "protocol": task.protocol if task else None}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    if args.predictions and result:
        with open(args.predictions, "w") as f:
            for ex, rec in zip(examples, result.records):  # everything needed to audit a row by hand
                f.write(json.dumps({"prompt": ex.prompt, "answers": ex.answers, "choices": ex.choices,
                                    "label": ex.label, "prompt_ids": _prompt_ids(scorer, ex), **rec}) + "\n")
    return 0


def register_eval(p):
    from ..evaluation.metrics import METRICS

    add_model_args(p)
    add_task_args(p, required=False)
    add_edit_args(p, required=False)
    p.add_argument("--split", default="all", choices=["val", "test", "all"], help="which rows (default all)")
    p.add_argument("--metrics", metavar="M1,M2",
                   help="metrics to compute (default: the protocol's for built-in tasks, else all that apply except "
                        "the generation ones): "
                        + "; ".join(f"{m.name}: {m.help}" for m in METRICS.values()))
    p.add_argument("--gen-tokens", type=positive_int, metavar="N",
                   help="tokens generated for gen01/gen01_paper (default: the protocol's, 15 for hotpotqa, else 10)")
    p.add_argument("--text", metavar="FILE", help="also (or only) measure perplexity on this text file")
    p.add_argument("--window", type=positive_int, default=1024, help="perplexity context window in tokens (default 1024)")
    p.add_argument("--stride", type=positive_int, default=512, help="perplexity sliding-window stride (default 512)")
    p.add_argument("--lm-eval", metavar="TASKS",
                   help="run lm-evaluation-harness tasks (comma-separated) on the in-memory model instead of -t; "
                        "with -e, the base model too, and the difference per task ('what it costs elsewhere'). "
                        "--limit caps the documents per task; --lm-eval-include adds local task YAMLs. Needs "
                        "pip install 'laserlm[lmeval]'")
    p.add_argument("--json", metavar="FILE", help="write {model, task, split, n, edits, metrics} as JSON "
                                                   "(with --lm-eval, lm-eval's result dict under \"lm_eval\")")
    p.add_argument("--predictions", metavar="FILE", help="write one JSON line per example with its scores")
    p.set_defaults(run=run_eval)


EXAMPLE = """laser eval demo -t bb_wikidata --split val --limit 1000 --json base.json
laser eval demo -t bb_wikidata --split val --limit 1000 -e mlp_in:27:0.01
laser eval demo -t rows.jsonl --metrics top1,gen01
laser eval demo --text book.txt -e mlp:20-29:0.1
laser eval EleutherAI/gpt-j-6b -e mlp_in:27:0.01 --lm-eval arc_easy,hellaswag --limit 500"""
