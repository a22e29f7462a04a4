"""`laser info`: layers, canonical matrix types, shapes and parameter counts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .options import add_model_args, load_from_args


def model_info(loaded, layout) -> dict:
    """Layers, canonical types with their module patterns and shapes, parameter counts, where the layout came from,
    and whether the search's fast path applies (`fast_path`, with `fast_path_reason` when it does not)."""
    model = loaded.model
    types = []
    for t in layout.types:
        targets = layout.targets([t])
        shape = targets[0].shape
        experts = max(len(x.matrices()) for x in targets)
        types.append({
            "type": t,
            "module": layout.patterns[t],
            "shape": list(shape),
            "max_rank": min(shape),
            "params_per_matrix": shape[0] * shape[1],
            "params_all_layers": sum(x.numel for x in targets),
            "layers": len(targets),
            **({"matrices_per_layer": experts} if experts > 1 else {}),
        })
    info = {
        "model": loaded.spec,
        "model_type": layout.model_type,
        "class": type(model).__name__,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "layers": layout.n_layers,
        "layout": layout.source,
        "blocks": layout.blocks,
        "notes": layout.notes,
        "parameters": sum(p.numel() for p in model.parameters()),
        "types": types,
    }
    info.update(fast_path_info(loaded, layout))
    return info


def fast_path_info(loaded, layout) -> dict:
    """`fast_path`: the head only at scored positions, shared-prefix packing and the prefix cache all apply."""
    from ..evaluation.scoring import Scorer
    from ..sweep.prefix import check_replay

    if not hasattr(loaded.model, "get_output_embeddings") or loaded.model.get_output_embeddings() is None:
        return {"fast_path": False, "fast_path_reason": "not a language model: no LM head to score with"}
    scorer = Scorer(loaded.model, loaded.tokenizer)
    replay = check_replay(loaded.model, layout)
    parts = {"head_at_scored_positions": scorer.fast, "packing": scorer.trees, "prefix_cache": replay.prefix,
             "attention_replay": replay.attention}
    reasons = list(scorer.fast_reasons)
    if not scorer.tree_capable and not scorer.mlm:
        reasons.append(f"packing needs an attention implementation that takes a 4-D mask (sdpa or eager), not "
                       f"{getattr(loaded.model.config, '_attn_implementation', None)}")
    reasons += [r for r in replay.reasons if r not in reasons]
    ok = scorer.fast and replay.prefix and (scorer.trees or scorer.mlm)
    out = {"fast_path": ok, "fast_path_parts": parts}
    if not ok or reasons:
        out["fast_path_reason"] = "; ".join(reasons)
    return out


def run_info(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..core.layout import get_layout

    loaded = load_from_args(args)
    info = model_info(loaded, get_layout(loaded.model, args.module_pattern))
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(f"[bold]{info['model']}[/]  {info['class']} (model_type {info['model_type']}), "
                  f"{info['layers']} layers, {info['parameters']:,} parameters, {info['dtype']}; "
                  f"matrices from the {info['layout']}" + (f" ({', '.join(info['notes'])})" if info["notes"] else ""))
    console.print("fast path: " + ("yes" if info["fast_path"] else "no") +
                  (f" ({info['fast_path_reason']})" if info.get("fast_path_reason") else ""))
    table = Table("type", "module", "shape (out x in)", "max rank", "params/matrix", "params, all layers")
    for t in info["types"]:
        n = t.get("matrices_per_layer")
        table.add_row(t["type"], t["module"] + (f" ({n} matrices a layer: experts)" if n else ""),
                      "x".join(map(str, t["shape"])), str(t["max_rank"]),
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
