"""Ranks across many matrices for a parameter budget: what `laser compress --target` allocates.

Each matrix's cost of keeping rank k is its truncation loss on calibration inputs, relative to its output energy:
for W (out x in) with mean input Gram matrix G and a method whose reduction is (W M)_k M^-1 (M = I for svd, the
ASVD scaling, the whitening factor S),

    L(k) = ||(W - W'_k) G^1/2||_F^2 / ||W G^1/2||_F^2 = sum_{j > k} s_j^2 c_j / sum_j s_j^2 c_j,

with s_j, v_j the singular values and right vectors of W M and c_j = (M^-1 v_j)^T G (M^-1 v_j) (the cross terms
vanish since the left vectors are orthonormal; for the whitening c_j = 1, and L is its own tail). Without
statistics, c_j = 1: the plain Frobenius tail.

A matrix kept at rank k is stored as k (m + n) numbers when that is fewer than m n, else dense. Two allocations:

- uniform: every matrix keeps the same fraction f of its numbers (k = floor(f m n / (m + n))), f the largest that
  meets the budget; SVD-LLM's and ASVD's reported setting.
- loss: the ranks that minimise sum_i L_i(k_i) under the budget, by Lagrangian relaxation: for a price lambda each
  matrix takes the k minimising L_i(k) + lambda P_i(k) on its own (dense included), lambda bisected to the
  smallest price that fits; then the budget left is spent greedily, a rank at a time, where it lowers the loss
  most per number (SVD-LLM V2's loss-proportional allocation, solved rather than approximated).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError


@dataclass
class Curve:
    """One matrix: its type and layer, out x in shape, and L(k) for k = 0 .. min(m, n) (float64, L[r] = 0)."""

    type: str
    layer: int
    shape: tuple[int, int]
    loss: torch.Tensor

    @property
    def dense(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def max_rank(self) -> int:
        return min(self.shape)

    @property
    def max_factored(self) -> int:
        """The largest k whose factors take fewer numbers than the dense matrix."""
        m, n = self.shape
        return min(self.max_rank, (m * n - 1) // (m + n))

    def params(self, k: int) -> int:
        m, n = self.shape
        return self.dense if k >= self.max_rank or k * (m + n) >= m * n else k * (m + n)


def loss_curve(weight: torch.Tensor, scale: torch.Tensor | None, gram: torch.Tensor | None,
               unscale=None, cache=None) -> torch.Tensor:
    """L(k) for `weight` (out x in) reduced as (W M)_k M^-1: `scale` is W M (None: W itself), `unscale(B)` gives
    B M^-1 (None: M = I), `gram` the mean x x^T of the inputs (None: plain Frobenius)."""
    matrix = (weight if scale is None else scale).detach().to(torch.float32).contiguous()
    svd = cache.get(matrix) if cache is not None else None
    if svd is not None:
        S, Vh = svd.S.to(torch.float64), svd.Vh.to(torch.float64)
    else:
        _, S, Vh = torch.linalg.svd(matrix.to(torch.float64), full_matrices=False)
    energy = S ** 2
    if gram is not None:
        directions = Vh if unscale is None else unscale(Vh)
        g = gram.to(device=directions.device, dtype=torch.float64)
        energy = energy * ((directions @ g) * directions).sum(1).clamp_min(0)
    tail = torch.cat([energy.flip(0).cumsum(0).flip(0), energy.new_zeros(1)])
    return (tail / tail[0].clamp_min(1e-300)).cpu()


def budget_for(total: int, target: float, curves: list[Curve]) -> int:
    """Numbers the matrices in reach may keep so that the whole model keeps at most `target` of `total`; a
    one-line refusal where even rank 1 everywhere is not enough."""
    reach = sum(c.dense for c in curves)
    budget = reach - (total - int(target * total))
    least = sum(c.params(1) for c in curves)
    if budget < least:
        removable = reach - least
        raise UserError(f"keeping {target:g} of the parameters needs {total - int(target * total):,} of the model's "
                        f"{total:,} removed, but the matrices in reach can give at most {removable:,}: reduce more "
                        "matrix types or layers, or keep a larger fraction")
    return budget


def uniform(curves: list[Curve], budget: int) -> list[int]:
    """Ranks keeping one fraction f of every matrix's numbers, f the largest that fits (bisection)."""
    def ranks(f: float) -> list[int]:
        return [c.max_rank if f >= 1 else max(1, int(f * c.dense / (c.shape[0] + c.shape[1]))) for c in curves]

    lo, hi = 0.0, 1.0
    if sum(c.params(k) for c, k in zip(curves, ranks(hi))) <= budget:
        return ranks(hi)
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sum(c.params(k) for c, k in zip(curves, ranks(mid))) <= budget else (lo, mid)
    return ranks(lo)


def _choices(c: Curve) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ks = torch.cat([torch.arange(1, c.max_factored + 1), torch.tensor([c.max_rank])])
    params = torch.tensor([c.params(int(k)) for k in ks], dtype=torch.float64)
    return ks, params, c.loss[ks]


def by_loss(curves: list[Curve], budget: int) -> list[int]:
    """The ranks minimising the summed relative loss under the budget (see the module)."""
    options = [_choices(c) for c in curves]

    def pick(price: float) -> list[int]:
        return [int(torch.argmin(loss + price * params)) for _, params, loss in options]

    def cost(idx: list[int]) -> float:
        return sum(float(o[1][i]) for o, i in zip(options, idx))

    if cost(pick(0.0)) <= budget:
        return [c.max_rank for c in curves]
    lo, hi = 0.0, 1.0
    while cost(pick(hi)) > budget:
        hi *= 4
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if cost(pick(mid)) <= budget else (mid, hi)
    idx = pick(hi)
    spare = budget - cost(idx)
    # Spend what is left a rank at a time where it lowers the loss most per number (within the factored range).
    while True:
        best, gain = None, 0.0
        for j, (o, i) in enumerate(zip(options, idx)):
            if i + 1 < len(o[0]) - 1 and o[1][i + 1] - o[1][i] <= spare:
                g = float(o[2][i] - o[2][i + 1]) / float(o[1][i + 1] - o[1][i])
                if g > gain:
                    best, gain = j, g
        if best is None:
            break
        spare -= float(options[best][1][idx[best] + 1] - options[best][1][idx[best]])
        idx[best] += 1
    return [int(o[0][i]) for o, i in zip(options, idx)]


ALLOCATIONS = {"uniform": uniform, "loss": by_loss}


def curve_for(target, edit_type: str, layer: int, method: str, cache) -> Curve:
    """The Curve of one matrix under `method` (svd, asvd or whiten), from the statistics calibration attached
    to it (svd without them: the plain Frobenius tail)."""
    from .calibrated import asvd_alpha, asvd_scaled, input_stats, whitened

    w = target.weight.T if target.transposed else target.weight
    stats = getattr(target.module, "laser_input_stats", None)
    if method == "svd":
        loss = loss_curve(w, None, None if stats is None else stats.gram, cache=cache)
        return Curve(edit_type, layer, tuple(w.shape), loss)
    stats = input_stats(target, f"{method}/{edit_type}:{layer}")  # the refusal names the fix
    if method == "whiten":
        loss = loss_curve(w, whitened(w, stats)[0], None, cache=cache)
    elif (alpha := asvd_alpha(method)) is not None:
        scaled, s = asvd_scaled(w, stats, alpha)
        loss = loss_curve(w, scaled, stats.gram, unscale=lambda B: B / s[None, :], cache=cache)
    else:
        raise UserError(f"ranks are allocated for svd, asvd (asvdA) and whiten, not {method}")
    return Curve(edit_type, layer, tuple(w.shape), loss)
