"""Successive halving over val rows (`laser search --halving ETA`).

Every candidate is scored on a first slice of val; the best 1/ETA by the selection metric survive; the slice
doubles; and so on until the survivors are scored on all of val, like any candidate of a plain search. The
risk is plain: a candidate that is weak on the first slice is never seen on all of val.

Partial scores go to `halving.jsonl` (keyed, like every store, by the rows they were scored on), so a killed
run resumes mid-halving and the survivors of each round come out the same.
"""

from __future__ import annotations

import math
from typing import Callable

from ..core.edits import Edit
from ..evaluation.metrics import rank_key
from .sweeper import text_tiebreak

HALVING_STORE = "halving.jsonl"
MIN_ROWS = 32  # a first slice smaller than this ranks candidates mostly by noise


def rounds_text(plan: list[tuple[int, int]]) -> str:
    return ", ".join(f"{c} on {r} rows" for r, c in plan)


def schedule(n_candidates: int, n_rows: int, eta: int, min_rows: int = MIN_ROWS) -> list[tuple[int, int]]:
    """(rows, candidates) per round: rows double from the first slice to all of val, candidates shrink by
    ETA (rounded up). As many rounds as leave at least one candidate per ETA and `min_rows` in the first
    slice."""
    if eta < 2:
        raise ValueError("eta must be at least 2")
    rounds = 0
    while eta ** (rounds + 1) <= n_candidates and n_rows / 2 ** (rounds + 1) >= min_rows:
        rounds += 1
    first = math.ceil(n_rows / 2 ** rounds)
    plan, alive = [], n_candidates
    for i in range(rounds + 1):
        plan.append((n_rows if i == rounds else first * 2 ** i, alive))
        alive = math.ceil(alive / eta)
    return plan


def survivors(scores: dict[Edit, dict], keep: int, primary: str, lower: bool | None = None) -> list[Edit]:
    """The `keep` best by the selection order (ties broken by the other metrics, then by the edit's text)."""
    return sorted(scores, key=lambda e: (*rank_key(scores[e], primary, lower), text_tiebreak(e)), reverse=True)[:keep]


def halve(candidates: list[Edit], plan: list[tuple[int, int]], score: Callable[[list[Edit], int], dict],
          primary: str, lower: bool | None = None, log=None) -> list[Edit]:
    """Every round but the last; returns the candidates for the last (all of val). `score(cands, rows)`
    gives {edit: metrics} on the first `rows` val rows."""
    alive = list(candidates)
    for (rows, _), (_, keep) in zip(plan, plan[1:]):
        scores = score(alive, rows)
        alive = survivors(scores, keep, primary, lower)
        log and log(f"halving: {len(scores)} candidates on {rows} rows, {len(alive)} go on")
    return alive
