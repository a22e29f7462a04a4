"""The `laser info` and `laser apply` subcommands; other subcommands register here too."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .cli import add_edit_args, add_model_args, load_from_args, svd_cache_from_args


def _folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def model_info(loaded, layout) -> dict:
    """Layers, canonical types with their module patterns and shapes, and parameter counts."""
    model = loaded.model
    types = []
    for t in layout.types:
        targets = layout.targets([t])
        shape = targets[0].shape
        types.append({
            "type": t,
            "module": layout.patterns[t],
            "shape": list(shape),
            "max_rank": min(shape),
            "params_per_matrix": shape[0] * shape[1],
            "params_all_layers": sum(x.shape[0] * x.shape[1] for x in targets),
            "layers": len(targets),
        })
    return {
        "model": loaded.spec,
        "model_type": layout.model_type,
        "class": type(model).__name__,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "layers": layout.n_layers,
        "layout": layout.source,
        "parameters": sum(p.numel() for p in model.parameters()),
        "types": types,
    }


def run_info(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from .arch import get_layout

    loaded = load_from_args(args)
    info = model_info(loaded, get_layout(loaded.model, args.module_pattern))
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(f"[bold]{info['model']}[/]  {info['class']} (model_type {info['model_type']}), "
                  f"{info['layers']} layers, {info['parameters']:,} parameters, {info['dtype']}; "
                  f"matrices from the {info['layout']}")
    table = Table("type", "module", "shape (out x in)", "max rank", "params/matrix", "params, all layers")
    for t in info["types"]:
        table.add_row(t["type"], t["module"], "x".join(map(str, t["shape"])), str(t["max_rank"]),
                      f"{t['params_per_matrix']:,}", f"{t['params_all_layers']:,}")
    console.print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=2) + "\n")
    return 0


def register_info(p):
    add_model_args(p)
    p.add_argument("--json", metavar="FILE", help="also write the table as JSON")
    p.set_defaults(run=run_info)


def run_apply(args) -> int:
    from .arch import get_layout
    from .export import export

    cache = svd_cache_from_args(args)
    loaded = load_from_args(args)
    layout = get_layout(loaded.model, args.module_pattern)
    before = sum(p.numel() for p in loaded.model.parameters())
    t0 = time.perf_counter()
    recipe = export(loaded, args.edit, args.output, factorized=args.factorized, layout=layout, svd_cache=cache)
    after = sum(p.numel() for p in loaded.model.parameters())
    out = Path(args.output)
    print(f"applied {len(recipe['edits'])} edits in {time.perf_counter() - t0:.1f} s "
          f"({cache.computed} SVDs computed, {cache.disk_hits} from the cache)")
    if recipe["factorized"]:
        print(f"factorized {len(recipe['factorized'])} matrices: {before:,} -> {after:,} parameters")
    print(f"wrote {out} ({_human(_folder_size(out))})")
    return 0


def register_apply(p):
    add_model_args(p)
    add_edit_args(p, required=True)
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="new folder for the edited model")
    p.add_argument("--factorized", action="store_true",
                   help="store each reduced matrix as two factors (m x k, k x n) where that is smaller; "
                        "laserlm loads the folder with the same logits")
    p.set_defaults(run=run_apply)


from .eval_cmd import EXAMPLE as EVAL_EXAMPLE, register_eval  # noqa: E402
from .search_cmd import SEARCH_EXAMPLE, register_report, register_search  # noqa: E402
from .analyze_cmd import register_analyze  # noqa: E402

COMMANDS = {
    "info": (register_info, "Show layers, canonical matrix types, shapes and parameter counts.",
             "laser info demo\nlaser info gpt2 --json gpt2.json"),
    "apply": (register_apply, "Apply edits and save the model as an HF folder (dense or --factorized).",
              "laser apply demo -e mlp_in:27:0.01 -e mlp_out:20-27:k=8 -o smol-laser\n"
              "laser apply demo -e mlp:all:0.1 -o smol-small --factorized"),
    "eval": (register_eval, "Evaluate a model on a task (edits applied for the evaluation only).", EVAL_EXAMPLE),
    "search": (register_search, "Sweep (type, layer, rho) on val, pick the best, report val and test.",
               SEARCH_EXAMPLE),
    "report": (register_report, "Regenerate report.md and plots of a search from its run folder.",
               "laser report runs/wiki"),
    "analyze": (register_analyze, "The paper's analyses: spectrum, perplexity, components.",
                "laser analyze spectrum demo --json spectrum.json\n"
                "laser analyze perplexity demo -e mlp_in:28:0.01\n"
                "laser analyze components demo -t bb_wikidata -e mlp_in:28:0.01 --limit 500"),
}
