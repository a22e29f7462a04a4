"""Greedy picks at gathered positions, as generate() makes them, for the verification of generation drafts."""

from __future__ import annotations

import torch


def tolerance(value: float, dtype: torch.dtype) -> float:
    """A lead smaller than this may be rounding: a teacher-forced pass and generate()'s cached decoding sum in other
    orders."""
    return max(1e-3, 8 * torch.finfo(dtype).eps * abs(value))


def leaves_draft(token: int, expected: int, value: float, lead: float, dtype: torch.dtype) -> str | None:
    """Where a greedy pick along a draft stops following it: "tie" (its lead is within rounding, so generate() may
    pick otherwise), "flip" (it picks another token), or None (it follows the draft). The one rule both the head's
    picks (Greedy.run) and the drafts' acceptance (generation.py) apply."""
    if lead < tolerance(value, dtype):
        return "tie"
    return "flip" if token != expected else None


class Greedy:
    """Greedy picks at gathered rows, as generate() makes them: the argmax of the float32 logits with the barred
    tokens (EOS before min_new_tokens) at -inf; with each pick, its logit and its lead over the runner-up.

    A request's picks form a group. With expected tokens (a draft), the group is picked one position per round, and
    stops after the first position where the pick differs from the draft or leads by less than `tolerance`: what
    follows is never read (generation.py decodes from there). On late-layer edits most drafts stop within two
    tokens, so most of the head's work on draft positions is skipped."""

    def __init__(self):
        self.rows: list[int] = []
        self.barred: list[tuple[int, ...]] = []
        self.groups: list[tuple[int, int, list[int] | None]] = []  # (first pick, picks, expected tokens)
        self.made: list[int] = []  # picks made per group
        self.tokens: list[int] = []  # per pick, once run
        self.margins: list[tuple[float, float]] = []

    def add(self, rows: list[int], barred: list[tuple[int, ...]], expect: list[int] | None) -> None:
        self.groups.append((len(self.rows), len(rows), expect))
        self.rows += rows
        self.barred += barred

    def picks(self, g: int) -> tuple[list[int], list[tuple[float, float]]]:
        first, made = self.groups[g][0], self.made[g]
        return self.tokens[first:first + made], self.margins[first:first + made]

    def run(self, logits_of, dtype: torch.dtype, chunk: int) -> None:
        """Every group's picks; `logits_of(rows)` gives the float32 logits at gathered rows, `chunk` rows at most."""
        self.tokens = [0] * len(self.rows)
        self.margins = [(0.0, 0.0)] * len(self.rows)
        self.made = [count if expect is None else 0 for _, count, expect in self.groups]
        alive = [g for g, (_, count, _) in enumerate(self.groups) if count]
        step = 0
        while alive:
            todo = []  # picks due this round: a group without a draft all at once, one with a draft its next one
            for g in alive:
                first, count, expect = self.groups[g]
                todo += range(first, first + count) if expect is None else [first + step]
            for s in range(0, len(todo), chunk):
                part = todo[s:s + chunk]
                self.pick(logits_of(torch.tensor([self.rows[k] for k in part], dtype=torch.long)), part)
            going = []
            for g in alive:
                first, count, expect = self.groups[g]
                if expect is None:
                    continue
                self.made[g] = step + 1
                value, lead = self.margins[first + step]
                if step + 1 < count and leaves_draft(self.tokens[first + step], expect[step], value, lead, dtype) is None:
                    going.append(g)
            alive, step = going, step + 1

    def pick(self, scores: torch.Tensor, sel: list[int]) -> None:
        """Picks `sel` (indices of self.rows) from their logits, one row each."""
        bars = [(j, [t for t in self.barred[k] if t < scores.shape[-1]]) for j, k in enumerate(sel) if self.barred[k]]
        if any(barred for _, barred in bars):  # ids past the vocabulary never win
            scores = scores.clone()
            for j, barred in bars:
                scores[j, barred] = float("-inf")
        top2 = scores.topk(min(2, scores.shape[-1]), dim=-1)
        best, top2 = top2.indices[:, 0], top2.values
        lead = (top2[:, 0] - top2[:, -1]) if top2.shape[-1] > 1 else torch.full_like(top2[:, 0], float("inf"))
        for k, tok, value, gap in zip(sel, best.tolist(), top2[:, 0].tolist(), lead.tolist()):
            self.tokens[k], self.margins[k] = tok, (value, gap)
