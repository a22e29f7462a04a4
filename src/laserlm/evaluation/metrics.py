"""The metric registry: each metric aggregates per-example records into one number.

Per-example records (see evaluate.py) hold: cloze `top1`, `top10`, `nll` (mean per-token NLL of the
first answer), `robust`, `gen01`; choice `scores` (summed log-probability per choice), `acc`, `logloss`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import UserError


@dataclass(frozen=True)
class Metric:
    name: str
    kinds: tuple[str, ...]
    fn: Callable[[list[dict]], float]
    default: bool  # computed unless the user names metrics
    needs: str | None = None  # "generate" or "paraphrases": extra work the metric costs
    help: str = ""


METRICS: dict[str, Metric] = {}
PRIMARY = {"cloze": "top1", "choice": "acc"}


def register_metric(name: str, kinds: tuple[str, ...], *, default: bool = True, needs: str | None = None, help: str = ""):
    def deco(fn):
        METRICS[name] = Metric(name, kinds, fn, default, needs, help)
        return fn

    return deco


def _mean(values) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else float("nan")


@register_metric("top1", ("cloze",), help="first token of any answer is the top-1 next-token prediction")
def _top1(records):
    return _mean(r["top1"] for r in records)


@register_metric("top10", ("cloze",), help="first token of any answer is among the top-10 predictions")
def _top10(records):
    return _mean(r["top10"] for r in records)


@register_metric("logloss", ("cloze", "choice"),
                 help="cloze: mean per-token NLL of the first answer; choice: -log softmax over choices of the label")
def _logloss(records):
    return _mean(r["nll"] if "nll" in r else r["logloss"] for r in records)


@register_metric("acc", ("choice",), help="argmax over choices of the summed log-probability equals the label")
def _acc(records):
    return _mean(r["acc"] for r in records)


@register_metric("robust", ("cloze",), needs="paraphrases",
                 help="the prompt and every paraphrase are top-1 correct")
def _robust(records):
    return _mean(r["robust"] for r in records)


@register_metric("gen01", ("cloze",), default=False, needs="generate",
                 help="greedy generation (prompt excluded) contains an answer, case-insensitive")
def _gen01(records):
    return _mean(r["gen01"] for r in records)


def choose_metrics(kind: str, names: list[str] | None, has_paraphrases: bool) -> list[Metric]:
    """The user's metrics (checked against the task kind), or the defaults for this kind."""
    if names:
        out = []
        for n in names:
            if n not in METRICS:
                raise UserError(f"unknown metric {n!r}: use one of {', '.join(METRICS)}")
            if kind not in METRICS[n].kinds:
                raise UserError(f"metric {n} is for {'/'.join(METRICS[n].kinds)} tasks, and this task is {kind}")
            out.append(METRICS[n])
        return out
    return [m for m in METRICS.values()
            if kind in m.kinds and m.default and (m.needs != "paraphrases" or has_paraphrases)]
