"""`laser apply`: edit a model for good and save it as an HF folder, dense or factorized."""

from __future__ import annotations

import time
import json
from pathlib import Path

from ..errors import UserError
from .options import (add_edit_args, add_model_args, add_save_dtype, calibrate_from_args, command_line, load_from_args, output_dir,
                      output_file, save_dtype, svd_cache_from_args)


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
    args.card_figures = run_figures(best)
    run_model = (manifest.get("args") or {}).get("model")
    if args.model is None:
        if run_model is None:
            raise UserError(f"--from {run}: the run does not name its model (an API search): give MODEL")
        args.model = run_model
    if args.module_pattern is None:
        args.module_pattern = (manifest.get("args") or {}).get("module_pattern")
    print(f"from {run}: {' '.join(args.edit)} (verdict: {selection.get('verdict') or 'none'}"
          f"{', forced' if selection.get('verdict') != 'edit' else ''})")


def run_figures(best: dict) -> list[dict]:
    """The model card's figures from a search's best.json: val and test of the base and the applied edit."""
    metric, base, chosen = best.get("metric"), best.get("base") or {}, best.get("best") or {}
    rows = []
    for split in ("val", "test"):
        if isinstance(base.get(split), (int, float)) and isinstance(chosen.get(split), (int, float)):
            row = {"split": split, "metric": metric, "base": base[split], "edited": chosen[split],
                   "difference": chosen[split] - base[split]}
            if split == "test" and chosen.get("test_ci"):
                row["difference"], row["interval"] = chosen.get("test_diff", row["difference"]), chosen["test_ci"]
            rows.append(row)
    return rows


def _write_gguf(args, loaded, layout, cache) -> None:
    """--gguf: the edited matrices into a copy of the source GGUF file, or (an HF model) a complete GGUF file; the
    model itself stays unedited."""
    from ..core.edits import plan

    if loaded.gguf is None:
        from ..models.gguf_hf import check_writable

        check_writable(loaded.model, loaded.tokenizer)
    t0 = time.perf_counter()
    edited = {}
    for step in plan(loaded.model, args.edit, layout, cache):
        if step.target.index is not None or step.target.transposed:
            raise UserError(f"--gguf: {step.target.name} is not a plain Linear matrix of the GGUF file")
        edited[step.target.name] = (step.target.weight, step.reduce(cache).matrix())
    if loaded.gguf is None:
        from ..models.gguf_hf import write_gguf_hf

        report = write_gguf_hf(loaded.model, loaded.tokenizer, Path(args.gguf), {n: e for n, (_, e) in edited.items()},
                               args.quant, loaded.source_dtype)
        print(f"wrote {args.gguf}: {report['tensors']} tensors ({report['type']}; {report['edited']} edited; "
              f"tokenizer {report['tokenizer']}; dense, as llama.cpp has no low-rank layers) in "
              f"{time.perf_counter() - t0:.1f} s")
        return
    from ..models.gguf_out import write_gguf

    report = write_gguf(loaded.gguf, Path(args.gguf), edited, args.quant)
    kinds = ", ".join(sorted(set(report["changed"].values())))
    how = "in place: metadata and every other tensor byte-identical" if report["in_place"] else "rewritten"
    print(f"wrote {args.gguf}: {len(report['changed'])} tensors requantized to {kinds} ({how}; dense, as llama.cpp "
          f"has no low-rank layers) in {time.perf_counter() - t0:.1f} s")


def run_apply(args) -> int:
    from ..core.layout import get_layout
    from ..models.export import export

    if args.from_run:
        from_run(args)
    elif args.model is None or not args.edit:
        raise UserError("laser apply needs MODEL and -e EDIT, or --from RUN_DIR")
    if args.output is None and args.gguf is None:
        raise UserError("laser apply needs -o DIR (an HF folder), --gguf FILE, or both")
    if args.gguf is not None:
        output_file(args.gguf, "--gguf")
    elif args.quant != "same":
        raise UserError("--quant sets the type of the tensors --gguf writes: add --gguf FILE")
    output_dir(args.output)
    cache = svd_cache_from_args(args)
    loaded = load_from_args(args)
    layout = get_layout(loaded.model, args.module_pattern)
    calibrate_from_args(args, loaded, layout, args.edit)
    if args.gguf is not None:
        _write_gguf(args, loaded, layout, cache)
        if args.output is None:
            return 0
    before = sum(p.numel() for p in loaded.model.parameters())
    t0 = time.perf_counter()
    recipe = export(loaded, args.edit, args.output, factorized=args.factorized, layout=layout, svd_cache=cache,
                    save_dtype=save_dtype(args, loaded), command=command_line(args),
                    figures=getattr(args, "card_figures", None))
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
    p.add_argument("-o", "--output", metavar="DIR", help="new folder for the edited model (HF format)")
    p.add_argument("--gguf", metavar="OUT.gguf",
                   help="also (or only) write the edited model as a GGUF file for llama.cpp, Ollama and LM Studio, "
                        "dense. From a GGUF source: metadata and untouched tensors copied byte for byte, the edited "
                        "tensors requantized. From an HF model (llama, mistral, qwen2, qwen3): a complete file, "
                        "tokenizer included")
    p.add_argument("--quant", default="same", choices=["same", "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0",
                                                       "Q5_1"],
                   help="type of the edited tensors in --gguf (of every matrix, from an HF model): same (default) "
                        "as in the source, or the nearest type gguf can quantize (said in the output)")
    add_save_dtype(p)
    p.add_argument("--factorized", action="store_true",
                   help="store each reduced matrix as two factors (m x k, k x n) where that is smaller; "
                        "laserlm loads the folder with the same logits")
    p.set_defaults(run=run_apply)


EXAMPLE = """laser apply demo -e mlp_in:27:0.01 -e mlp_out:20-27:k=8 -o smol-laser
laser apply --from runs/wiki -o smol-wiki
laser apply demo -e mlp:all:0.1 -o smol-small --factorized"""
