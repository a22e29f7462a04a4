"""`laser eval`: metrics of a model, edited for the evaluation only, on a task or a text file."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..errors import UserError
from .options import (add_edit_args, add_model_args, add_task_args, load_from_args, output_file, positive_int,
                      print_metrics, read_text, rows_for, scorer_for, svd_cache_from_args, task_from_args,
                      task_metrics)


def _prompt_ids(scorer, ex) -> list[int]:
    from ..evaluation.evaluate import _pair

    return _pair(scorer, ex.prompt, ex.choices[0] if ex.choices else " " + ex.answers[0])[0]


def run_eval(args) -> int:
    from tqdm import tqdm

    from ..core.layout import get_layout
    from ..core.edits import edited, plan
    from ..evaluation.evaluate import evaluate, perplexity
    from ..evaluation.metrics import choose_metrics

    if not args.task and not args.text:
        raise UserError("name a task with -t TASK, or a text file with --text FILE for perplexity")
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
    examples = rows_for(task, args.split, args, loaded.tokenizer, args.limit) if task else None
    metrics = task_metrics(task, names, loaded, examples) if task else None
    layout = get_layout(loaded.model, args.module_pattern)
    steps = plan(loaded.model, args.edit, layout)
    scorer = scorer_for(loaded, args)
    t0 = time.perf_counter()
    with edited(loaded.model, [s.edit for s in steps], layout=layout, svd_cache=cache):
        out: dict[str, float] = {}
        result = None
        if task:
            with tqdm(total=None, unit="seq", disable=not sys.stderr.isatty(), leave=False) as bar:
                result = evaluate(scorer, examples, metrics, gen_tokens=args.gen_tokens or task.gen_tokens,
                                  progress=bar.update)
            out.update(result.metrics)
        if text is not None:
            out.update(perplexity(scorer, text, window=args.window, stride=args.stride))
    secs = time.perf_counter() - t0
    edits = [s.edit.to_json() for s in steps]
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
    p.add_argument("--json", metavar="FILE", help="write {model, task, split, n, edits, metrics} as JSON")
    p.add_argument("--predictions", metavar="FILE", help="write one JSON line per example with its scores")
    p.set_defaults(run=run_eval)


EXAMPLE = """laser eval demo -t bb_wikidata --split val --limit 1000 --json base.json
laser eval demo -t bb_wikidata --split val --limit 1000 -e mlp_in:27:0.01
laser eval demo -t rows.jsonl --metrics top1,gen01
laser eval demo --text book.txt -e mlp:20-29:0.1"""
