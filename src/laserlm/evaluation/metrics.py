"""The metric registry: each metric aggregates per-example records into one number.

Per-example records (see evaluate.py) hold: `nll` (mean per-token NLL over the whole vocabulary of the gold
continuation: the first answer, or the correct choice); cloze `top1`, `top10`, `robust`, `gen01`,
`gen01_paper`; choice `scores` (summed log-probability per choice), `acc`, `choice_logloss`.
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
    lower_is_better: bool = False
    row: str | None = None  # the record key holding each example's value (its mean is the metric)


METRICS: dict[str, Metric] = {}
PRIMARY = {"cloze": "top1", "choice": "acc"}


def register_metric(name: str, kinds: tuple[str, ...], *, default: bool = True, needs: str | None = None, help: str = "",
                    lower_is_better: bool = False, row: str | None = None):
    """Register `fn(records) -> float`; `row` names the record key of each example's value, for paired
    comparisons (the metric being the mean of those values)."""
    def deco(fn):
        METRICS[name] = Metric(name, kinds, fn, default, needs, help, lower_is_better, row or name)
        return fn

    return deco


def row_values(records: list[dict], metric: str) -> list[float] | None:
    """Each example's value of `metric` (whose mean is the metric), or None where the records lack it. A user
    objective's records hold its metrics by name."""
    key = METRICS[metric].row if metric in METRICS else metric
    if not records or any(key not in r for r in records):
        return None
    return [float(r[key]) for r in records]


def _mean(values) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else float("nan")


@register_metric("top1", ("cloze",), help="first token of any answer is the top-1 next-token prediction")
def _top1(records):
    return _mean(r["top1"] for r in records)


@register_metric("top10", ("cloze",), help="first token of any answer is among the top-10 predictions")
def _top10(records):
    return _mean(r["top10"] for r in records)


@register_metric("logloss", ("cloze", "choice"), lower_is_better=True, row="nll",
                 help="the paper's loss: mean per-token NLL, over the whole vocabulary, of the gold continuation "
                      "(cloze: the first answer; choice: the correct choice)")
def _logloss(records):
    return _mean(r["nll"] for r in records)


@register_metric("choice_logloss", ("choice",), lower_is_better=True,
                 help="-log softmax over the choices of the correct choice's summed log-probability (calibrated)")
def _choice_logloss(records):
    return _mean(r["choice_logloss"] for r in records)


@register_metric("acc", ("choice",), help="argmax over choices of the summed log-probability equals the label")
def _acc(records):
    return _mean(r["acc"] for r in records)


@register_metric("acc_norm", ("choice",), default=False,
                 help="as acc, each choice's log-probability divided by its length in characters (its leading "
                      "space left out), as lm-evaluation-harness's acc_norm")
def _acc_norm(records):
    return _mean(r["acc_norm"] for r in records)


@register_metric("robust", ("cloze",), needs="paraphrases",
                 help="the prompt and every paraphrase are top-1 correct")
def _robust(records):
    return _mean(r["robust"] for r in records)


@register_metric("gen01", ("cloze",), default=False, needs="generate",
                 help="greedy generation (prompt excluded) contains an answer, case-insensitive; costs one "
                      "generate() of N tokens per row, batched (masked LMs: the argmax at five masks after the "
                      "prompt, one forward)")
def _gen01(records):
    return _mean(r["gen01"] for r in records)


@register_metric("gen01_paper", ("cloze",), default=False, needs="generate",
                 help="as gen01, but the prompt is decoded with the generation, as the authors did (lenient: an "
                      "answer in the prompt counts); for comparison with the paper")
def _gen01_paper(records):
    return _mean(r["gen01_paper"] for r in records)


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


LOSS_SUFFIXES = ("loss", "nll", "perplexity", "ppl", "error")


def lower_is_better(metric: str, lower: bool | None = None) -> bool:
    """The direction of `metric`: `lower` where the caller knows it (a user objective's metric), else the
    registry's; a name outside it is minimised if it ends like a loss (loss, nll, perplexity, ppl, error), else
    maximised."""
    if lower is not None:
        return lower
    if metric in METRICS:
        return METRICS[metric].lower_is_better
    return metric.lower().endswith(LOSS_SUFFIXES)


TIE_ORDER = ("acc", "top1", "gen01", "gen01_paper", "acc_norm", "top10", "logloss", "choice_logloss", "robust")


def rank_key(metrics: dict, primary: str, lower: bool | None = None) -> tuple:
    """A key to maximise: the primary metric first (logloss-like ones minimised; `lower` overrides its
    direction), then the registry's other metrics in a fixed order, then any others (a user objective's) by
    name, each in its direction (lower_is_better), so ties break the same way everywhere."""
    order = [primary] + [m for m in TIE_ORDER if m != primary]
    order += sorted(m for m in metrics if m not in order)
    out = []
    for name in order:
        down = lower_is_better(name, lower if name == primary else None)
        value = metrics.get(name)
        if value is None or value != value:  # missing or NaN: worst
            out.append(float("-inf"))
        else:
            out.append(-value if down else value)
    return tuple(out)
