"""A user's objective: any function that evaluates the model, as edited at that moment, on "val" or "test".

The search needs three things from it besides the numbers: which metric to select on, that metric's
direction, and an identity (name and version) that keys its stored results, so that a changed objective
never reuses the scores of an old one.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Callable

from ..errors import UserError
from ..evaluation.evaluate import Evaluation
from ..models.python import display_module

SPLITS = ("val", "test")


@dataclass
class Objective:
    """`fn(model, split) -> {metric: float}`; `metric` is the one to select on.

    `higher_is_better=False` for a loss. `version` is yours to bump when `fn` changes what it measures
    (other data, another metric definition): results stored under another version are not reused.
    A value under the key "n" (the number of examples) is stored as the row's n, not as a metric; one under
    "per_row", {metric: [value per example]}, gives the test comparison its paired intervals (best.json)."""

    fn: Callable
    metric: str
    higher_is_better: bool = True
    name: str | None = None
    version: str = "1"

    def __post_init__(self):
        if not callable(self.fn):
            raise UserError(f"the objective must be callable, not {type(self.fn).__name__}")
        if self.name is None:
            module = display_module(getattr(self.fn, "__module__", None) or "?")
            self.name = f"{module}.{getattr(self.fn, '__qualname__', repr(self.fn))}"

    @property
    def identity(self) -> dict:
        return {"objective": self.name, "version": str(self.version)}

    def fingerprint(self, split: str) -> dict:
        """What the manifest and every result key record of a split's rows: the objective decides them."""
        digest = hashlib.sha256(repr((self.name, str(self.version), split)).encode()).hexdigest()[:16]
        return {"n": None, "hash": digest}

    def __call__(self, model, split: str) -> tuple[dict[str, float], int, list[dict]]:
        """The checked metrics, n and per-example records ({metric: value}, from "per_row") for `split`."""
        out = self.fn(model, split)
        if not isinstance(out, dict):
            raise UserError(f"objective {self.name} returned {type(out).__name__}, not a dict of metric -> float")
        n = out.get("n", 0)
        records = self._records(out.get("per_row"))
        groups = out.get("groups")
        if groups is not None:
            if not isinstance(groups, (list, tuple)) or len(groups) != len(records):
                raise UserError(f"objective {self.name} returned groups that are not one id per row of per_row "
                                f"({len(records)} rows): return \"groups\": [one id per row], or leave it out")
            for rec, g in zip(records, groups):
                rec["group"] = str(g)
        metrics = {}
        for key, value in out.items():
            if key in ("n", "per_row", "groups"):
                continue
            try:
                metrics[str(key)] = float(value)
            except (TypeError, ValueError):
                raise UserError(f"objective {self.name} returned {key}={value!r}, which is not a number") from None
        if self.metric not in metrics or math.isnan(metrics[self.metric]):
            raise UserError(f"objective {self.name} returned no value for its metric {self.metric!r} "
                            f"(it returned {', '.join(metrics) or 'nothing'}): return it, or select on another")
        return metrics, int(n or 0), records

    def _records(self, per_row) -> list[dict]:
        if per_row is None:
            return []
        lengths = {len(v) for v in per_row.values()} if isinstance(per_row, dict) else set()
        if not isinstance(per_row, dict) or len(lengths) != 1:
            raise UserError(f"objective {self.name} returned per_row that is not {{metric: [one value per example]}} "
                            "with lists of one length")
        names = list(per_row)
        return [dict(zip(names, values)) for values in zip(*(per_row[k] for k in names))]


def as_objective(objective, metric: str | None = None, higher_is_better: bool | None = None,
                 version: str | None = None) -> Objective:
    """An Objective from an Objective (the arguments override its fields) or a plain function (which then
    needs `metric`)."""
    if isinstance(objective, Objective):
        changes = {k: v for k, v in (("metric", metric), ("higher_is_better", higher_is_better),
                                     ("version", version)) if v is not None}
        return Objective(**{**objective.__dict__, **changes}) if changes else objective
    if metric is None:
        raise UserError("a plain objective function needs the metric to select on: pass metric=... "
                        "or wrap it in laserlm.Objective(fn, metric=...)")
    return Objective(objective, metric, True if higher_is_better is None else higher_is_better,
                     version="1" if version is None else version)


class ObjectiveSplit:
    """The objective on one split, shaped like the text search's prepared rows: `score()` gives the
    metrics of the model as it is now."""

    def __init__(self, objective: Objective, model, split: str):
        if split not in SPLITS:
            raise ValueError(split)
        self.objective, self.model, self.split = objective, model, split

    def score(self, context=None) -> Evaluation:
        metrics, n, records = self.objective(self.model, self.split)
        return Evaluation(metrics, records, n)
