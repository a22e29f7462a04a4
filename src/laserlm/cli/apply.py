"""`laser apply`: edit a model for good and save it as an HF folder, dense or factorized."""

from __future__ import annotations

import time
import json
from pathlib import Path

from ..errors import UserError
from .options import (add_edit_args, add_model_args, add_save_dtype, calibrate_from_args, load_from_args, output_dir,
                      save_dtype, svd_cache_from_args)


def _folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def from_run(args) -> None:
    """--from RUN_DIR: the run's selected edits become -e, and its model MODEL unless one is given; an edit the
    run's verdict rejects needs --force."""
    from ..core.edits import Edit
    from ..evaluation.selection import verdict_text

    run = Path(args.from_run)
    try:
        best = json.loads((run / "best.json").read_text())
        manifest = json.loads((run / "run.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise UserError(f"--from {run}: no best.json and run.json of a finished laser search there") from None
    if args.edit:
        raise UserError("give either -e EDIT or --from RUN_DIR, not both")
    selection = best.get("selection") or {}
    if not selection and not args.force:
        raise UserError(f"--from {run}: its best.json predates selection verdicts: rerun the same laser search "
                        f"with -o {run} (nothing is re-evaluated), or add --force to apply its best edit")
    edits = best["best"]["edits"] or (selection.get("argmax") if args.force else [])
    if selection and selection.get("verdict") != "edit" and not args.force:
        shown = " ".join(str(Edit.from_json(e)) for e in (edits or selection.get("argmax") or [])) or "none"
        raise UserError(f"--from {run}: {verdict_text(selection)}; --force applies its best edit ({shown}) anyway")
    if not edits:
        raise UserError(f"--from {run}: the run evaluated no edit")
    args.edit = [str(Edit.from_json(e)) for e in edits]
    run_model = (manifest.get("args") or {}).get("model")
    if args.model is None:
        if run_model is None:
            raise UserError(f"--from {run}: the run does not name its model (an API search): give MODEL")
        args.model = run_model
    if args.module_pattern is None:
        args.module_pattern = (manifest.get("args") or {}).get("module_pattern")
    print(f"from {run}: {' '.join(args.edit)} (verdict: {selection.get('verdict') or 'none'}"
          f"{', forced' if selection.get('verdict') != 'edit' else ''})")


def run_apply(args) -> int:
    from ..core.layout import get_layout
    from ..models.export import export

    if args.from_run:
        from_run(args)
    elif args.model is None or not args.edit:
        raise UserError("laser apply needs MODEL and -e EDIT, or --from RUN_DIR")
    output_dir(args.output)
    cache = svd_cache_from_args(args)
    loaded = load_from_args(args)
    layout = get_layout(loaded.model, args.module_pattern)
    calibrate_from_args(args, loaded, layout, args.edit)
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
    add_model_args(p, optional=True)
    add_edit_args(p, required=False)
    p.add_argument("--from", dest="from_run", metavar="RUN_DIR",
                   help="apply the edits a laser search selected (RUN_DIR's best.json), on its model unless MODEL "
                        "is given; refused when its verdict is that no edit beats the base beyond selection noise")
    p.add_argument("--force", action="store_true",
                   help="with --from: apply the run's best edit even though its verdict rejects it")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="new folder for the edited model")
    add_save_dtype(p)
    p.add_argument("--factorized", action="store_true",
                   help="store each reduced matrix as two factors (m x k, k x n) where that is smaller; "
                        "laserlm loads the folder with the same logits")
    p.set_defaults(run=run_apply)


EXAMPLE = """laser apply demo -e mlp_in:27:0.01 -e mlp_out:20-27:k=8 -o smol-laser
laser apply --from runs/wiki -o smol-wiki
laser apply demo -e mlp:all:0.1 -o smol-small --factorized"""
