"""Write an edited model as an HF folder: dense (plain transformers loads it) or factorized."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from .._version import __version__
from ..core.layout import Layout, get_layout
from ..core.edits import EditLike, apply_edits, edits_of, plan, write_matrix
from ..errors import UserError
from .factorized import FACTORS, RECIPE, dense_entries, factored, replace_module
from .card import model_card
from .loading import Loaded, quiet_progress
from .remote_code import write_remote_code
from ..core.svd import SVDCache, default_cache


def export(
    loaded: Loaded,
    edits: list[EditLike],
    out_dir: str | Path,
    *,
    factorized: bool = False,
    layout: Layout | None = None,
    svd_cache: SVDCache | None = None,
    save_dtype: torch.dtype | None = None,
    command: str | None = None,
    figures: list[dict] | None = None,
    card_extra: list[str] | None = None,
) -> dict:
    """Bake `edits` into `loaded.model` (in place) and save it with laser_recipe.json and a model card. Weights are
    written in `save_dtype`, by default the source checkpoint's own (bf16 in, bf16 out), whatever they were
    computed in. `command`, `figures` (rows of split, metric, base, edited, difference, interval) and
    `card_extra` (markdown lines) go into the model card. A factorized folder of a transformers architecture gets
    modeling code (laser_modeling.py, config.json's auto_map), so plain transformers loads it too."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"output folder {out} is not empty: choose a new -o folder or empty it")
    model = loaded.model
    layout = layout or get_layout(model)
    cache = svd_cache or default_cache()
    steps = plan(model, edits, layout, cache)
    stored: dict[str, dict] = {}
    lowrank: dict[str, torch.nn.Module] = {}
    copies: dict[int, torch.Tensor] = {}
    dtype = save_dtype or loaded.source_dtype or next(model.parameters()).dtype
    with torch.no_grad():
        for step in steps:
            module = step.target.module
            if getattr(module, "is_low_rank", False):  # loaded from a --factorized folder: edit its factors
                apply_edits(model, [step.edit], layout=layout, svd_cache=cache)
                continue
            reduced = step.reduce(cache)
            new = factored(module, reduced) if factorized and step.target.index is None else None
            if new is not None:
                lowrank[step.target.name], stored[step.target.name] = new, new.info()
            else:
                write_matrix(step.target, reduced.matrix(), [], copies)
    out.mkdir(parents=True, exist_ok=True)
    # The factorized matrices stay out of model.safetensors: their factors go to a file of our own.
    state = {k: v for k, v in model.state_dict().items() if k not in {f"{name}.weight" for name in lowrank}}
    # Matrices already factorized (a --factorized folder edited again) keep their factors with
    # --factorized, and are written back dense without it, never as stray down/up keys.
    for name, module in model.named_modules():
        if getattr(module, "is_factored", False):
            for key in [k for k in state if k.startswith(f"{name}.")]:
                state.pop(key)
            state.update(dense_entries(name, module, keep_factors=factorized))
            if factorized:
                lowrank[name], stored[name] = module, module.info()
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    with quiet_progress():
        model.save_pretrained(out, state_dict=state)
    _config_dtype(out / "config.json", dtype)
    factors: dict[str, torch.Tensor] = {}
    for name, module in lowrank.items():
        replace_module(model, name, module)
        factors.update({k: v.to(dtype) for k, v in module.tensors(name).items()})
    if factors:
        save_file(factors, out / FACTORS)
    if loaded.tokenizer is not None:
        loaded.tokenizer.save_pretrained(out)
    recipe = {
        "source": loaded.identity,
        "edits": [e.to_json() for e in edits_of(steps)],
        "ranks": {s.target.name: s.k for s in steps if s.k is not None},
        "factorized": stored,
        "laserlm_version": __version__,
        "dtype": str(dtype).removeprefix("torch."),
    }
    (out / RECIPE).write_text(json.dumps(recipe, indent=2) + "\n")
    remote = write_remote_code(out, model, stored)
    (out / "README.md").write_text(model_card(loaded, steps, bool(stored), remote, command, figures, card_extra))
    return recipe


def _config_dtype(path: Path, dtype: torch.dtype) -> None:
    """config.json says the dtype the weights were written in (save_pretrained writes the in-memory one)."""
    config = json.loads(path.read_text())
    for key in ("dtype", "torch_dtype"):
        if key in config or key == "dtype":
            config[key] = str(dtype).removeprefix("torch.")
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
