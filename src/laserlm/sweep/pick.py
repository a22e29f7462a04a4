"""The pick among a run's evaluated candidates, and its selection figures (evaluation/selection.py), from the
per-row val values each result row keeps. A row without them (a run folder from before they were kept, or an
objective that returns no "per_row") gets the raw figures and a note saying that no correction was possible."""

from __future__ import annotations

from ..evaluation.metrics import lower_is_better, rank_key
from ..evaluation.selection import DEFAULT_RULE, PAPER, RULES, Table, select
from .store import unpack_rows
from .sweeper import best_row

ALPHA = 0.05
SELECT_CHOICES = RULES + (PAPER,)


def _values(row: dict, metric: str) -> list[float] | None:
    if "per_row" in row:
        return row["per_row"].get(metric)
    packed = (row.get("rows") or {}).get(metric)
    return unpack_rows(packed) if packed is not None else None


def choose(base: dict, family: list[dict], metric: str, lower: bool | None, rule: str = DEFAULT_RULE,
           alpha: float = ALPHA, argmax: dict | None = None) -> tuple[dict | None, dict]:
    """(the picked row, or None for the base model; the "selection" dict of best.json) among `family` (result
    rows on val) under `rule`. `best` and `paper` pick by best_row (the primary metric, ties broken by the others);
    every rule but `paper` keeps the base unless its pick beats it. `argmax`: the row the caller's own procedure picked (compose's
    stack), scored with the resamples picking by argmax."""
    if rule not in SELECT_CHOICES:
        raise ValueError(f"unknown selection rule {rule!r}")
    top = argmax or best_row(family, metric, lower)
    if top is not None and rule != PAPER and argmax is None \
            and rank_key(top["metrics"], metric, lower) <= rank_key(base["metrics"], metric, lower):
        top = None
    out = {"rule": rule, "k": len(family), "alpha": alpha}
    base_values = _values(base, metric)
    columns = [_values(r, metric) for r in family]
    if base_values is None or not family or any(c is None or len(c) != len(base_values) for c in columns):
        raw = 0.0 if top is None else _gain(top, base, metric, lower)
        note = ("no per-row val values (a run folder from an older laserlm, or an objective without per_row): the "
                "raw figures only, no correction for choosing among the candidates")
        if rule in ("lcb", "shrink"):
            note += f"; {rule} needs them, so the pick is the argmax"
        return top, {**out, "p_any": None, "verdict": None, "val_gain": raw, "val_gain_corrected": None,
                     "note": note}
    table = Table.build(base_values, columns, lower=lower_is_better(metric, lower), groups=base.get("groups"),
                        keys=[(r["edits"][0]["layer"] if len(r["edits"]) == 1 else "stack") for r in family])
    index = {id(r): i for i, r in enumerate(family)}
    if rule in ("best", PAPER) or argmax is not None:
        chosen = index[id(top)] if top is not None else -1
        selection = select(table, "best" if argmax is not None else rule, alpha, chosen=chosen)
    else:
        selection = select(table, rule, alpha)
        chosen = selection["pick"]
        top = family[chosen] if chosen >= 0 else None
    selection.pop("pick")
    return top, {**out, **selection}


def _gain(row: dict, base: dict, metric: str, lower: bool | None) -> float:
    d = row["metrics"][metric] - base["metrics"][metric]
    return -d if lower_is_better(metric, lower) else d
