"""`laser apply`: edit a model for good and save it as an HF folder, dense or factorized."""

from __future__ import annotations

import time
from pathlib import Path

from .options import (add_edit_args, add_model_args, add_save_dtype, load_from_args, output_dir, save_dtype,
                      svd_cache_from_args)


def _folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def run_apply(args) -> int:
    from ..core.layout import get_layout
    from ..models.export import export

    output_dir(args.output)
    cache = svd_cache_from_args(args)
    loaded = load_from_args(args)
    layout = get_layout(loaded.model, args.module_pattern)
    before = sum(p.numel() for p in loaded.model.parameters())
    t0 = time.perf_counter()
    recipe = export(loaded, args.edit, args.output, factorized=args.factorized, layout=layout, svd_cache=cache,
                    save_dtype=save_dtype(args, loaded))
    after = sum(p.numel() for p in loaded.model.parameters())
    out = Path(args.output)
    print(f"applied {len(recipe['edits'])} edits in {time.perf_counter() - t0:.1f} s "
          f"({cache.computed} SVDs computed, {cache.disk_hits} from the cache)")
    if recipe["factorized"]:
        print(f"factorized {len(recipe['factorized'])} matrices: {before:,} -> {after:,} parameters")
    print(f"wrote {out} ({_human(_folder_size(out))}, {recipe['dtype']})")
    return 0


def register_apply(p):
    add_model_args(p)
    add_edit_args(p, required=True)
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="new folder for the edited model")
    add_save_dtype(p)
    p.add_argument("--factorized", action="store_true",
                   help="store each reduced matrix as two factors (m x k, k x n) where that is smaller; "
                        "laserlm loads the folder with the same logits")
    p.set_defaults(run=run_apply)


EXAMPLE = """laser apply demo -e mlp_in:27:0.01 -e mlp_out:20-27:k=8 -o smol-laser
laser apply demo -e mlp:all:0.1 -o smol-small --factorized"""
