"""Clustered rank reduction (Sreeram, Maalouf, Sharma & Rus, "Compress to Impress", 2025): the rows of a matrix
(its output features) are grouped, and each group is replaced by its own low-rank approximation.

Which grouping: the one whose groupwise approximation is closest to the matrix, so rows that lie near a common
low-dimensional subspace share a group, whatever their lengths and signs. That is k-subspaces clustering: each
group is fitted by its rank-k SVD (k as the edit asks of a group of m / c rows: floor(rho * min(m / c, n))), each
row goes to the group whose subspace leaves it the smallest residual, until no row moves; each group then keeps
floor(rho * min(its size, n)). Plain k-means on the rows would split a
subspace by the rows' lengths and signs instead (a subspace's rows have a mean near zero). It starts from
k-lines (unit rows clustered by |cos| to principal lines, k-means++ seeding), the best of a few seeded restarts
by the total residual; groups are numbered by their first row. The same matrix and amount always give the same
groups; the grouping depends on the amount, so the SVD cache keeps one per (matrix, groups, amount).
"""

from __future__ import annotations

import math

import torch

RESTARTS = 3
ITERATIONS = 20
POWER_STEPS = 4


def group_rank(amount, size: int, n: int) -> int:
    """The rank a group of `size` rows keeps: max(1, floor(rho * min(size, n))), or k=K capped at the group's."""
    from .ranks import rank_for

    if isinstance(amount, str):
        return min(int(amount[2:]), min(size, n))
    return rank_for(amount, (size, n))


def _k_lines(x: torch.Tensor, c: int, g: torch.Generator) -> torch.Tensor:
    """Labels from k-means on lines through the origin: unit rows, |cos| to a group's principal direction."""
    unit = x / x.norm(dim=1, keepdim=True).clamp_min(1e-30)
    centres = [unit[int(torch.randint(len(x), (1,), generator=g))]]
    for _ in range(1, c):  # k-means++: the next centre far (in 1 - cos^2) from those drawn
        near = (unit @ torch.stack(centres).T).abs().max(1).values
        weight = (1 - near.square()).clamp_min(0).double().cpu() + 1e-12
        centres.append(unit[int(torch.multinomial(weight, 1, generator=g))])
    centres = torch.stack(centres)
    labels = (unit @ centres.T).abs().argmax(1)
    for _ in range(10):
        for j in range(c):
            rows = unit[labels == j]
            if len(rows):
                v = centres[j]
                for _ in range(POWER_STEPS):
                    v = rows.T @ (rows @ v)
                    v = v / v.norm().clamp_min(1e-30)
                centres[j] = v
        new = (unit @ centres.T).abs().argmax(1)
        if torch.equal(new, labels):
            break
        labels = new
    return labels


def _top_row_space(rows: torch.Tensor, k: int) -> torch.Tensor:
    """(k, n): an orthonormal basis of the top-k right singular subspace of `rows`, from the smaller Gram matrix
    (eigh of an n x n or g x g matrix costs far less than the SVD of g x n, many times per clustering)."""
    if rows.shape[0] >= rows.shape[1]:
        vals, vecs = torch.linalg.eigh(rows.T @ rows)
        return vecs[:, -k:].T
    vals, vecs = torch.linalg.eigh(rows @ rows.T)  # left vectors; right ones are rows' u / s
    u, s = vecs[:, -k:], vals[-k:].clamp_min(0).sqrt()
    return ((rows.T @ u) / s.clamp_min(1e-30)).T


def _residuals(x: torch.Tensor, labels: torch.Tensor, c: int, k: int) -> torch.Tensor:
    """(rows, c): each row's squared residual after projection on each group's rank-k row space."""
    energy = x.square().sum(1)
    out = torch.empty(len(x), c, dtype=x.dtype, device=x.device)
    for j in range(c):
        rows = x[labels == j]
        if not len(rows):
            out[:, j] = math.inf
            continue
        out[:, j] = energy - (x @ _top_row_space(rows, k).T).square().sum(1)
    return out


def cluster_rows(w: torch.Tensor, c: int, amount, seed: int = 0) -> torch.Tensor:
    """Group labels (0..c-1, one per row of `w`) for a clustered rank-k approximation: see the module."""
    m = w.shape[0]
    if c <= 1:
        return torch.zeros(m, dtype=torch.long, device=w.device)
    if m <= c:  # a row per group
        return torch.arange(m, device=w.device)
    x = w.detach().to(torch.float64 if w.dtype == torch.float64 else torch.float32)
    g = torch.Generator().manual_seed(seed)
    # One rank for every group while grouping (that of a group of m / c rows): with each group's own, a group that
    # happened to start large would keep more rank and draw ever more rows.
    k = group_rank(amount, m // c, x.shape[1])
    best, best_cost = None, math.inf
    for _ in range(RESTARTS):
        labels = _k_lines(x, c, g)
        for _ in range(ITERATIONS):
            res = _residuals(x, labels, c, k)
            new = res.argmin(1)
            for j in range(c):  # a group left empty takes the row worst explained where it is
                if not (new == j).any():
                    worst = res.gather(1, new[:, None]).flatten().argmax()
                    new[worst] = j
            if torch.equal(new, labels):
                break
            labels = new
        cost = _residuals(x, labels, c, k).gather(1, labels[:, None]).sum().item()
        if best is None or cost < best_cost - 1e-9 * max(1.0, abs(best_cost)):
            best, best_cost = labels, cost
    first = [int((best == j).nonzero()[0]) for j in range(c)]
    order = sorted(range(c), key=lambda j: first[j])
    rank = torch.empty(c, dtype=torch.long, device=best.device)
    rank[torch.tensor(order, device=best.device)] = torch.arange(c, device=best.device)
    return rank[best]
