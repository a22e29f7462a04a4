"""`laser analyze spectrum|flips|components|curve|perplexity`: each writes a table (--json) and a plot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..analysis import plots
from ..errors import UserError
from .options import (Parser, calibrate_from_args, add_batch_args, add_edit_args, add_model_args, add_svd_args, add_task_args, formatter,
                      load_from_args, output_dir, output_file, positive_int, scorer_for, svd_cache_from_args,
                      task_from_args, text_or_shipped, SHIPPED_TEXT)



def _write(args, table, plot_fn=None) -> None:
    """The table goes to -o DIR as analysis_<name>.json (and --json FILE); `laser report` renders it."""
    out = Path(args.output or "analysis")
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(table, indent=2) + "\n"
    (out / f"analysis_{args.analysis}.json").write_text(text)
    if args.json:
        Path(args.json).write_text(text)
    if plot_fn:
        plot_fn(out)




def run_spectrum(args) -> int:
    from ..analysis.analyses import spectrum
    from ..core.layout import get_layout
    from ..core.edits import parse_layers

    cache = svd_cache_from_args(args)
    loaded = load_from_args(args)
    layout = get_layout(loaded.model, args.module_pattern)
    types = layout.expand_type_list(args.types)
    layers = parse_layers(args.layers, f"--layers {args.layers}")
    rows = spectrum(layout, cache, types, range(layout.n_layers) if layers is None else layers)
    table = [{k: r[k] for k in ("type", "layer", "shape", "effective_rank")} for r in rows]

    def plot(out):
        plt = plots.pyplot()
        fig, ax = plt.subplots(figsize=(6, 3.8))
        for t in types:
            pts = [(r["layer"], r["effective_rank"] / r["max_rank"]) for r in rows if r["type"] == t]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=t)
        ax.set_xlabel("layer")
        ax.set_ylabel("effective rank / max rank")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "effective_rank.png", dpi=110)
        plt.close(fig)
        (out / "singular_values.json").write_text(json.dumps(rows) + "\n")

    _write(args, table, plot)
    for r in table:
        print(f"{r['type']:8s} {r['layer']:3d} {'x'.join(map(str, r['shape'])):>10s}  effective rank {r['effective_rank']:8.1f}")
    return 0


def run_perplexity(args) -> int:
    from ..core.layout import get_layout
    from ..core.edits import edited, edits_of, plan
    from ..evaluation.evaluate import perplexity

    text = text_or_shipped(args.text, "--text")
    cache = svd_cache_from_args(args)
    loaded = load_from_args(args)
    scorer = scorer_for(loaded, args)
    layout = get_layout(loaded.model, args.module_pattern)
    calibrate_from_args(args, loaded, layout, args.edit)
    steps = plan(loaded.model, args.edit, layout)
    before = perplexity(scorer, text, window=args.window, stride=args.stride)
    with edited(loaded.model, edits_of(steps), layout=layout, svd_cache=cache):
        after = perplexity(scorer, text, window=args.window, stride=args.stride)
    table = {"text": args.text or SHIPPED_TEXT, "tokens": before["tokens"],
             "edits": [e.to_json() for e in edits_of(steps)],
             "before": before["perplexity"], "after": after["perplexity"],
             "change": after["perplexity"] / before["perplexity"] - 1}
    _write(args, table, lambda out: plots.bars(out, "perplexity", ["before", "after"], [round(before["perplexity"], 3),
                                          round(after["perplexity"], 3)], "perplexity", f"edits: {args.edit}"))
    print(f"perplexity {table['before']:.3f} -> {table['after']:.3f} ({100 * table['change']:+.2f}%) "
          f"over {table['tokens']} tokens")
    return 0


def _edit_examples(args):
    return task_from_args(args).select(args.split, args.split_seed, args.limit)


def run_components(args) -> int:
    from ..analysis.analyses import answer_similarity, complement, flips, generic_share, records_with
    from ..core.layout import get_layout
    from ..core.edits import plan
    from ..evaluation.evaluate import Prepared

    cache = svd_cache_from_args(args)
    loaded = load_from_args(args)
    layout = get_layout(loaded.model, args.module_pattern)
    steps = plan(loaded.model, args.edit, layout)
    if len(steps) != 1 or steps[0].edit.method != "svd":
        raise UserError("components takes exactly one svd edit, e.g. -e mlp_in:27:0.01")
    step = steps[0]
    examples = _edit_examples(args)
    prepared = Prepared(scorer_for(loaded, args), examples)
    if examples[0].kind != "cloze":
        raise UserError("components compares next-token predictions: use a cloze task")
    base = records_with(loaded.model, layout, prepared, [], cache)
    top = records_with(loaded.model, layout, prepared, [step.edit], cache)
    bottom_edit = complement(step.edit, step.target.shape)
    bottom = records_with(loaded.model, layout, prepared, [bottom_edit], cache)
    tok = loaded.tokenizer
    corrected = flips(base, top).corrected
    table = [{"prompt": examples[i].prompt, "answer": examples[i].answers[0],
              "base": tok.decode([base[i]["pred_token"]]), "top": tok.decode([top[i]["pred_token"]]),
              "bottom": tok.decode([bottom[i]["pred_token"]])} for i in corrected]
    similarity = (answer_similarity(loaded.model, layout, prepared, step.edit, corrected, cache)
                  if corrected else [])
    shares = [generic_share([r[k] for r in table]) if table else 0.0 for k in ("base", "top", "bottom")]

    def draw(out):
        plots.bars(out, "components", ["base", f"top {step.k}", f"bottom {bottom_edit.amount[2:]}"],
              [round(x, 3) for x in shares], "share of generic-word predictions",
              f"{len(table)} rows corrected by {step.edit}")
        if similarity:
            plots.similarity(out, similarity, step.edit, len(table))

    _write(args, {"edit": step.edit.to_json(), "bottom_edit": bottom_edit.to_json(), "corrected": table,
                  "similarity": similarity}, draw)
    print(f"{len(table)} examples corrected by {step.edit}; predictions with only the top {step.k} "
          f"components vs only the bottom {bottom_edit.amount[2:]}:")
    for r in table[: args.show]:
        print(f"  {r['prompt'][:60]!r:64s} answer {r['answer']!r:14s} top {r['top']!r:12s} bottom {r['bottom']!r}")
    for r in similarity:
        print(f"  rho {r['rho']:<5g} cosine to the answer: top {r['top']:.3f}, bottom {r['bottom']:.3f}")
    return 0



def _run_folder(args):
    """A finished search's model, rows of --split, layout and best edit, as the run recorded them."""
    from ..core.edits import Edit
    from ..core.layout import get_layout
    from ..evaluation.tasks import load_task
    from ..models.loading import load_model

    run_dir = Path(args.run_dir)
    args.output = args.output or str(run_dir)
    try:
        manifest = json.loads((run_dir / "run.json").read_text())
        best = json.loads((run_dir / "best.json").read_text())
        run_args = manifest["args"]
    except (OSError, KeyError, json.JSONDecodeError):
        raise UserError(f"{run_dir} lacks run.json/best.json of a finished laser search") from None
    limit = run_args["limit"] if args.split == "val" else run_args["test_limit"]
    task = load_task(run_args["task"], run_args["data"], run_args.get("protocol", "paper"))
    loaded = load_model(run_args["model"], dtype=args.dtype, device=args.device)
    task.drop_long_answers(loaded.tokenizer)
    examples = task.select(args.split, manifest["split_seed"], limit)
    layout = get_layout(loaded.model, run_args.get("module_pattern"))
    edits = best["best"]["edits"]
    if not edits:  # the rule kept the base: the analyses study the best edit on val all the same
        edits = (best.get("selection") or {}).get("argmax") or []
        if not edits:
            raise UserError(f"{run_dir}: the search evaluated no edit")
        print(f"laser: the run's pick is the base model; analysing its best edit on val, "
              f"{' '.join(str(Edit.from_json(e)) for e in edits)}", file=sys.stderr)
    return loaded, task, examples, layout, [Edit.from_json(e) for e in edits], best


def run_flips(args) -> int:
    from ..analysis.analyses import flips, generic_share, records_with
    from ..evaluation.evaluate import Prepared

    loaded, _, examples, layout, edit, best = _run_folder(args)
    prepared = Prepared(scorer_for(loaded, args), examples)
    cache = svd_cache_from_args(args)
    base = records_with(loaded.model, layout, prepared, [], cache)
    after = records_with(loaded.model, layout, prepared, edit, cache)
    f = flips(base, after)
    tok = loaded.tokenizer
    name = "pred_token" if "pred_token" in base[0] else "pred"
    label = (lambda r: tok.decode([r[name]])) if name == "pred_token" else (lambda r: str(r[name]))
    corrected_preds = [label(base[i]) for i in f.corrected]
    table = {"edits": [e.to_json() for e in edit], "split": args.split, "n": len(examples), "counts": f.counts(),
             "generic_share_of_base_predictions_on_corrected": generic_share(corrected_preds),
             "examples": [{"index": i, "prompt": examples[i].prompt, "answer": (examples[i].answers or
                           [examples[i].choices[examples[i].label]])[0], "base": label(base[i]),
                           "edited": label(after[i]), "flip": kind}
                          for kind, idx in (("corrected", f.corrected), ("newly_wrong", f.newly_wrong)) for i in idx]}
    counts = table["counts"]
    _write(args, table, lambda out: plots.bars(out, "flips", list(counts), list(counts.values()), "examples",
                                          f"{args.split}: base against {edit}"))
    c = table["counts"]
    print(f"{args.split}, n={len(examples)}: both right {c['both_right']}, corrected {c['corrected']}, "
          f"newly wrong {c['newly_wrong']}, both wrong {c['both_wrong']}")
    print(f"generic words among the base model's predictions on corrected rows: "
          f"{100 * table['generic_share_of_base_predictions_on_corrected']:.1f}%")
    for r in table["examples"][: args.show]:
        print(f"  [{r['flip']}] {r['prompt'][:60]!r} answer {r['answer']!r}: base {r['base']!r} -> {r['edited']!r}")
    return 0


def run_seeds(args) -> int:
    from ..analysis.analyses import seed_spread
    from ..evaluation.evaluate import Prepared
    from ..evaluation.metrics import choose_metrics

    loaded, task, examples, layout, edits, best = _run_folder(args)
    if not edits:
        raise UserError(f"{args.run_dir}: the search selected no edit, so there is nothing to re-seed")
    metric = best["metric"]
    metrics = choose_metrics(task.kind, list(dict.fromkeys([metric, *best["best"]["val_metrics"]])), True)
    prepared = Prepared(scorer_for(loaded, args), examples, metrics, task.gen())
    table = {"edits": [e.to_json() for e in edits], "split": args.split, "n": len(examples), "metric": metric,
             **seed_spread(loaded.model, layout, prepared, edits, range(args.seeds))}
    _write(args, table, lambda out: plots.seeds(out, table))
    s = table["spread"][metric]
    print(f"{' '.join(map(str, edits))} on {args.split} (n={len(examples)}): {metric} exact {table['exact'][metric]:.4f}; "
          f"the authors' svd_lowrank over {args.seeds} seeds: mean {s['mean']:.4f}, sd {s['sd']:.4f}, "
          f"min {s['min']:.4f}, max {s['max']:.4f}; base {table['base'][metric]:.4f}")
    return 0



def run_curve(args) -> int:
    from ..analysis.analyses import curve, curve_landmarks
    from ..core.layout import get_layout
    from ..evaluation.evaluate import Prepared

    cache = svd_cache_from_args(args)
    loaded = load_from_args(args)
    layout = get_layout(loaded.model, args.module_pattern)
    layout.target(args.type, args.layer)
    examples = _edit_examples(args)
    prepared = Prepared(scorer_for(loaded, args), examples)
    rows = curve(loaded.model, layout, prepared, args.type, args.layer, cache)
    metric = "top1" if "top1" in rows[0] else "acc"
    marks = curve_landmarks(rows, metric)

    def plot(out):
        plt = plots.pyplot()
        fig, ax = plt.subplots(figsize=(6, 3.8))
        ax.plot([100 * r["removed"] for r in rows], [r[metric] for r in rows], marker="o", ms=3)
        ax.axhline(marks["base"], ls="--", color="black", label="unedited")
        ax.set_xlabel(f"% of the rank of {args.type}:{args.layer} removed")
        ax.set_ylabel(metric)
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / f"curve_{args.type}_{args.layer}.png", dpi=110)
        plt.close(fig)

    _write(args, {"type": args.type, "layer": args.layer, "rows": rows, "landmarks": marks}, plot)
    for r in rows:
        print(f"  removed {100 * r['removed']:7.2f}%  {metric} {r[metric]:.4f}  logloss {r['logloss']:.4f}")
    print(f"first improves at {marks['first_improves_at_removed']}, best at {marks['best_removed']}, "
          f"first degrades at {marks['first_degrades_at_removed']} (fractions removed)")
    return 0


def _split_and_show(q, splits=("val", "test", "all")) -> None:
    q.add_argument("--split", default="val", choices=splits, help="which rows (default val)")
    q.add_argument("--show", type=int, default=10, help="rows printed (default 10)")


def _reg_spectrum(q):
    add_model_args(q)
    add_svd_args(q)
    q.add_argument("--types", default="mlp_in,mlp_out", help="types or groups (default mlp_in,mlp_out)")
    q.add_argument("--layers", default="all", metavar="SPEC", help="layers (default all)")


def _reg_perplexity(q):
    add_model_args(q)
    add_edit_args(q, required=True)
    q.add_argument("--text", metavar="FILE", help=f"text file (default: the bundled {SHIPPED_TEXT})")
    q.add_argument("--window", type=positive_int, default=1024, help="context window in tokens (default 1024)")
    q.add_argument("--stride", type=positive_int, default=512, help="sliding-window stride (default 512)")
    add_batch_args(q)


def _reg_flips(q):
    q.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by laser search")
    q.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                   help="weights dtype: auto (default) is the checkpoint's own on a GPU, float32 on the CPU")
    q.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto: CUDA when available (default auto)")
    add_batch_args(q)
    add_svd_args(q)
    _split_and_show(q, ("val", "test"))


def _reg_seeds(q):
    _reg_flips(q)
    q.add_argument("--seeds", type=positive_int, default=10, help="seeds of the authors' randomized SVD (default 10)")


def _reg_components(q):
    add_model_args(q)
    add_edit_args(q, required=True)
    add_task_args(q, required=True)
    _split_and_show(q)


def _reg_curve(q):
    add_model_args(q)
    add_svd_args(q)
    add_task_args(q, required=True)
    q.add_argument("--type", required=True, help="matrix type, e.g. mlp_in")
    q.add_argument("--layer", required=True, type=int, help="layer index")
    q.add_argument("--split", default="val", choices=["val", "test", "all"], help="which rows (default val)")


COMMANDS = {
    "spectrum": (run_spectrum, _reg_spectrum, "Singular values and effective rank (Roy & Vetterli 2007) of each matrix."),
    "flips": (run_flips, _reg_flips, "Per example, base against the best edit of a search: which answers flip."),
    "seeds": (run_seeds, _reg_seeds, "The best edit of a search under N seeds of the authors' randomized SVD: the "
                                     "spread that their svd_lowrank alone puts on a paper figure."),
    "components": (run_components, _reg_components,
                   "For rows an svd edit corrects: predictions with only the top-k vs only the removed components."),
    "curve": (run_curve, _reg_curve, "The metric against the fraction of one matrix's rank removed, up to 99.95 percent."),
    "perplexity": (run_perplexity, _reg_perplexity, "Perplexity before and after edits (sliding window, stride 512)."),
}


EXAMPLES = {
    "spectrum": "laser analyze spectrum demo --types mlp_in,mlp_out --json spectrum.json -o runs/wiki",
    "flips": "laser analyze flips runs/wiki --split test",
    "seeds": "laser analyze seeds runs/wiki --seeds 10 --split val",
    "components": "laser analyze components demo -t bb_wikidata -e mlp_in:28:0.01 --limit 500 -o runs/wiki",
    "curve": "laser analyze curve demo -t bb_wikidata --type mlp_in --layer 28 --limit 300 -o runs/wiki",
    "perplexity": "laser analyze perplexity demo -e mlp_in:28:0.01 -o runs/wiki",
}


def _checked(run):
    def checked(args) -> int:  # output paths are refused before any work, not after it
        output_file(args.json, "--json")
        output_dir(args.output)
        return run(args)

    return checked


def register_analyze(p) -> None:
    sub = p.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True, parser_class=Parser)
    for name, (run, register, summary) in COMMANDS.items():
        q = sub.add_parser(name, help=summary, description=summary, formatter_class=formatter,
                           epilog=f"example:\n  {EXAMPLES[name]}")
        register(q)
        q.add_argument("--json", metavar="FILE", help="also write the table to FILE")
        q.add_argument("-o", "--output", metavar="DIR",
                       help="folder for the table and plot; give a search's RUN_DIR to add a section to its "
                            "report (default: RUN_DIR for flips, else ./analysis)")
        q.set_defaults(run=_checked(run))


EXAMPLE = """laser analyze spectrum demo --json spectrum.json
laser analyze perplexity demo -e mlp_in:28:0.01
laser analyze components demo -t bb_wikidata -e mlp_in:28:0.01 --limit 500"""
