"""`laserlm.search(model, objective, ...)`: the LASER search for any torch module and any objective.

The text search (`laser search -t TASK`) is the same job with prepared text rows in place of the objective
(and a prefix cache that the objective cannot have: it decides its own forward).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import torch

from .analysis.report import write_report
from .core.edits import parse_amounts, parse_layers
from .core.layout import Layout, get_layout
from .core.svd import SVDCache, default_cache
from .errors import UserError
from .models.python import module_fingerprint
from .evaluation.selection import DEFAULT_RULE
from .sweep.pick import ALPHA, SELECT_CHOICES
from .sweep.job import SearchJob, device_type, objective_splits, progress_bar, run_job
from .sweep.objective import Objective, as_objective
from .sweep.sweeper import PAPER_RHOS


def _types(layout: Layout, types) -> list[str]:
    text = types if isinstance(types, str) else ",".join(types)
    return layout.expand_type_list(text)


def _layers(layout: Layout, layers) -> list[int]:
    if isinstance(layers, str):
        layers = parse_layers(layers, f"layers={layers}")
    return list(range(layout.n_layers)) if layers is None else [int(x) for x in layers]


def search(
    model: torch.nn.Module,
    objective: Objective | Callable,
    *,
    run_dir: str | Path,
    types: str | Iterable[str] = ("mlp_in", "mlp_out"),
    layers: str | Iterable[int] | None = None,
    rhos: Iterable = PAPER_RHOS,
    methods: Iterable[str] = ("svd",),
    compose: bool = False,
    layout: Layout | None = None,
    module_patterns: list[str] | None = None,
    metric: str | None = None,
    higher_is_better: bool | None = None,
    model_id: str | None = None,
    cache: SVDCache | None = None,
    prescreen: str | None = None,
    budget: int | None = None,
    select: str = DEFAULT_RULE,
    alpha: float = ALPHA,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Sweep (type, layer, rho) on the objective's "val", select, report "test"; returns best.json's content
    plus "seconds" and "swept", and writes report.md and the plots into `run_dir`.

    `objective(model, split) -> {metric: float}` evaluates the model as edited at that moment; a plain
    function needs `metric=` (and `higher_is_better=False` for a loss), an `Objective` carries them. The
    run folder is resumable: a rerun (after a kill, or with a wider grid) evaluates only what is missing.
    Results are keyed by the objective's name and version, and by `model_id` (default: a fingerprint of
    the weights); change either and the old scores are not reused.

    The model is put in eval mode and every matrix it had is restored when the search returns.
    Matrices are addressed by the architecture table, by `module_patterns` ('blocks.{layer}.mlp.fc1'),
    or by an explicit `layout`. `prescreen="mp"|"snr"` with `budget=N` evaluates only the N candidates a
    data-free reading of the spectra ranks best.

    `select` is the rule that picks among the candidates ("best", "lcb", "shrink"; "paper" for the paper's argmax
    over edits only) and `alpha` the level of the verdict. The result's "selection" says how many candidates were
    compared, the family-wise p-value that some candidate beats the base, the verdict, and the pick's val gain raw
    (the best of K: optimistic) and corrected for the choice; both need the objective's "per_row".
    """
    if select not in SELECT_CHOICES:
        raise UserError(f"select={select!r}: use one of {', '.join(SELECT_CHOICES)}")
    if not 0 < alpha < 1:
        raise UserError(f"alpha={alpha}: give a level between 0 and 1, e.g. 0.05")
    objective = as_objective(objective, metric, higher_is_better)
    methods, rhos = list(methods), list(rhos)
    if not methods:
        raise UserError("methods is empty: give at least one, e.g. ('svd',)")
    model.eval()
    layout = layout or get_layout(model, module_patterns)
    types = _types(layout, types)
    layers = _layers(layout, layers)
    for layer in layers:
        layout.target(types[0], layer)  # a clear error for a layer out of range
    identity = {"model": {"model": model_id or type(model).__name__, "fingerprint": module_fingerprint(model)},
                "task": objective.identity}
    cache = cache or default_cache()
    job = SearchJob(
        model=model, layout=layout, splits=objective_splits(objective, model), metric=objective.metric,
        run_dir=Path(run_dir), types=types, layers=layers, amounts=parse_amounts(rhos, methods, f"rhos={rhos}"),
        methods=methods,
        cache=cache, compose=compose, identity=identity,
        numerics={"dtype": str(next(model.parameters()).dtype).removeprefix("torch."), "svd": cache.label,
                  "device": device_type(model)},
        lower=not objective.higher_is_better, prescreen=prescreen, budget=budget, select=select, alpha=alpha)
    result = run_job(job, bar=progress_bar() if progress else None, log=log)
    write_report(job.run_dir)
    return result
