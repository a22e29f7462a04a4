"""Paired uncertainty of a difference between two models on the same rows.

A search picks the best of hundreds of candidates on val, so a gain on test needs its uncertainty beside it:
- `paired_bootstrap`: the mean of per-row differences (other - base) with a percentile interval, rows resampled
  with replacement (fixed seed: the same interval every time);
- `mcnemar_exact`: for 0-1 rows, the exact two-sided binomial test on the discordant rows (rows right under one
  model only). Under the null hypothesis that both models are equally good, each discordant row is a fair coin.
"""

from __future__ import annotations

import math

import torch

RESAMPLES = 10_000
SEED = 0


def paired_bootstrap(base: list[float], other: list[float], *, resamples: int = RESAMPLES, seed: int = SEED,
                     level: float = 0.95) -> dict:
    """{"diff": mean(other - base), "ci": [low, high]}: the percentile interval of the resampled mean differences."""
    if len(base) != len(other):
        raise ValueError(f"paired rows differ in number: {len(base)} and {len(other)}")
    if not base:
        raise ValueError("no rows to compare")
    d = torch.tensor(other, dtype=torch.float64) - torch.tensor(base, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    means = []
    for start in range(0, resamples, 1000):  # bounded memory: 1000 x rows indices at a time
        n = min(1000, resamples - start)
        idx = torch.randint(len(d), (n, len(d)), generator=g)
        means.append(d[idx].mean(1))
    means = torch.cat(means).sort().values
    alpha = (1 - level) / 2
    lo = means[int(math.floor(alpha * (resamples - 1)))].item()
    hi = means[int(math.ceil((1 - alpha) * (resamples - 1)))].item()
    return {"diff": d.mean().item(), "ci": [lo, hi], "resamples": resamples, "seed": seed}


def mcnemar_exact(base: list[bool], other: list[bool]) -> dict:
    """{"gained", "lost", "p"}: rows right only with `other`, rows right only with `base`, and the exact two-sided
    p-value min(1, 2 P[X <= min(gained, lost)]), X ~ Binomial(gained + lost, 1/2)."""
    if len(base) != len(other):
        raise ValueError(f"paired rows differ in number: {len(base)} and {len(other)}")
    gained = sum(1 for b, o in zip(base, other) if o and not b)
    lost = sum(1 for b, o in zip(base, other) if b and not o)
    n = gained + lost
    if n == 0:
        return {"gained": 0, "lost": 0, "p": 1.0}
    tail = sum(math.comb(n, i) for i in range(min(gained, lost) + 1)) / 2 ** n
    return {"gained": gained, "lost": lost, "p": min(1.0, 2 * tail)}


def is_binary(values: list[float]) -> bool:
    return all(v in (0, 1, True, False) for v in values)


def compare(base: list[float], other: list[float], **kw) -> dict:
    """The paired bootstrap, plus McNemar's exact test where every value is 0 or 1."""
    out = paired_bootstrap(base, other, **kw)
    if is_binary(base) and is_binary(other):
        out["mcnemar"] = mcnemar_exact([bool(v) for v in base], [bool(v) for v in other])
    return out
