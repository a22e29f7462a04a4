"""`laser info`: layers, canonical matrix types, shapes and parameter counts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .options import add_model_args, load_from_args


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

    from ..core.layout import get_layout

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


EXAMPLE = """laser info demo
laser info gpt2 --json gpt2.json"""
