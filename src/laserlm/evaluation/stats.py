"""Paired uncertainty of a difference between two models on the same rows.

A search picks the best of hundreds of candidates on val, so a gain on test needs its uncertainty beside it:
- `paired_bootstrap`: the mean of per-row differences (other - base) with a percentile interval, rows resampled
  with replacement (fixed seed: the same interval every time);
- `mcnemar_exact`: for 0-1 rows, the exact two-sided binomial test on the discordant rows (rows right under one
  model only). Under the null hypothesis that both models are equally good, each discordant row is a fair coin.
Rows that share a group (one question's statements, one fact's paraphrases) are not independent: with group ids,
the bootstrap resamples groups and a sign-flip test over group nets replaces McNemar's.
"""

from __future__ import annotations

import math

import torch

RESAMPLES = 10_000
SEED = 0


def cluster_sums(d: torch.Tensor, groups: list | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per group: the sum of the row differences and the number of rows; None when every row is its own group."""
    if groups is None:
        return None
    if len(groups) != len(d):
        raise ValueError(f"{len(groups)} group ids for {len(d)} rows")
    ids = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    if len(ids) == len(d):
        return None
    index = torch.tensor([ids[g] for g in groups])
    sums = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, index, d)
    sizes = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, index, torch.ones_like(d))
    return sums, sizes


def paired_bootstrap(base: list[float], other: list[float], *, resamples: int = RESAMPLES, seed: int = SEED,
                     level: float = 0.95, groups: list | None = None) -> dict:
    """{"diff": mean(other - base), "ci": [low, high]}: the percentile interval of the resampled mean differences.

    With `groups` (one id per row), whole groups are resampled (a cluster bootstrap: rows of one group, such as the
    statements made from one question or the paraphrases of one fact, are not independent), and each resample's
    mean is its rows' total over its rows' count. Rows without a group id are their own group, so ungrouped rows
    give exactly the row bootstrap."""
    if len(base) != len(other):
        raise ValueError(f"paired rows differ in number: {len(base)} and {len(other)}")
    if not base:
        raise ValueError("no rows to compare")
    d = torch.tensor(other, dtype=torch.float64) - torch.tensor(base, dtype=torch.float64)
    clusters = cluster_sums(d, groups)
    units = d if clusters is None else clusters[0]
    g = torch.Generator().manual_seed(seed)
    means = []
    for start in range(0, resamples, 1000):  # bounded memory: 1000 x units indices at a time
        n = min(1000, resamples - start)
        idx = torch.randint(len(units), (n, len(units)), generator=g)
        means.append(d[idx].mean(1) if clusters is None else clusters[0][idx].sum(1) / clusters[1][idx].sum(1))
    means = torch.cat(means).sort().values
    alpha = (1 - level) / 2
    lo = means[int(math.floor(alpha * (resamples - 1)))].item()
    hi = means[int(math.ceil((1 - alpha) * (resamples - 1)))].item()
    out = {"diff": d.mean().item(), "ci": [lo, hi], "resamples": resamples, "seed": seed}
    if clusters is not None:
        out["groups"] = len(units)
    return out


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


def sign_flip(base: list[float], other: list[float], groups: list, *, resamples: int = RESAMPLES,
              seed: int = SEED) -> dict:
    """McNemar's question for grouped rows: under "both models are equally good", each group's net difference is
    as likely to have either sign. {"gained", "lost", "p"}, p = the share of random sign flips of the group nets
    whose total is at least as far from 0 as the observed one ((count + 1) / (resamples + 1), seeded). For rows that
    are their own groups, this is McNemar's exact test up to Monte Carlo error."""
    d = torch.tensor(other, dtype=torch.float64) - torch.tensor(base, dtype=torch.float64)
    clusters = cluster_sums(d, groups)
    nets = d if clusters is None else clusters[0]
    observed = abs(nets.sum().item())
    g = torch.Generator().manual_seed(seed)
    hits = 0
    for start in range(0, resamples, 1000):
        n = min(1000, resamples - start)
        signs = torch.randint(0, 2, (n, len(nets)), generator=g, dtype=torch.float64) * 2 - 1
        hits += int(((signs * nets).sum(1).abs() >= observed - 1e-9).sum())
    gained = int((d > 0).sum())
    lost = int((d < 0).sum())
    return {"gained": gained, "lost": lost, "p": (hits + 1) / (resamples + 1), "test": "group sign-flip",
            "groups": len(nets)}


def is_binary(values: list[float]) -> bool:
    return all(v in (0, 1, True, False) for v in values)


def compare(base: list[float], other: list[float], groups: list | None = None, **kw) -> dict:
    """The paired bootstrap, plus McNemar's exact test where every value is 0 or 1; with `groups` that join rows,
    the cluster bootstrap and the group sign-flip test in their place."""
    out = paired_bootstrap(base, other, groups=groups, **kw)
    if is_binary(base) and is_binary(other):
        if "groups" in out:
            out["mcnemar"] = sign_flip(base, other, groups)
        else:
            out["mcnemar"] = mcnemar_exact([bool(v) for v in base], [bool(v) for v in other])
    return out
