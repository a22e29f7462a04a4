"""The method registry: each edit method maps one weight matrix to its replacement.

A method sees the matrix in its stored layout (GPT-2's Conv1D is in x out): every method here is
invariant under transposition, so no layout juggling is needed. Low-rank methods return factors,
so `laser apply --factorized` can store them as they are.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import torch

from ..errors import UserError
from .svd import SVD


@dataclass
class Reduced:
    """The replacement of one matrix: W' = left @ right, a dense matrix, or (clustered methods) row groups, each
    left_j @ right_j, in the out x in orientation (`transposed`: the stored matrix is in x out, GPT-2's Conv1D)."""

    left: torch.Tensor | None = None
    right: torch.Tensor | None = None
    dense: torch.Tensor | None = None
    rank: int | None = None
    blocks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None  # (row indices, left, right)
    transposed: bool = False

    def matrix(self) -> torch.Tensor:
        if self.blocks is not None:
            rows, first = sum(len(i) for i, _, _ in self.blocks), self.blocks[0]
            out = torch.zeros(rows, first[2].shape[1], dtype=first[1].dtype, device=first[1].device)
            for idx, left, right in self.blocks:
                out[idx] = left @ right
            return out.T if self.transposed else out
        return self.dense if self.dense is not None else self.left @ self.right

    def transpose(self) -> "Reduced":
        """The same replacement for the transposed matrix (in x out storage): (L R)^T = R^T L^T."""
        if self.dense is not None:
            return Reduced(dense=self.dense.T, rank=self.rank)
        return Reduced(left=self.right.mT, right=self.left.mT, rank=self.rank)

    @property
    def parameters(self) -> int | None:
        """Numbers in the factored form: k(m + n), or the sum over groups."""
        if self.blocks is not None:
            return sum(left.numel() + right.numel() for _, left, right in self.blocks)
        return None if self.left is None else self.left.numel() + self.right.numel()


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable
    amount: str  # "rank": rho or k=K -> rank k; "fraction": rho only; "none": ignored
    needs_svd: bool
    help: str
    top_only: bool = False  # reads only the top-k components, so `--svd randomized` may serve it
    clusters: int = 0  # clustered methods: the number of row groups (fn then takes the groups, not one SVD)
    needs_stats: bool = False  # data-aware (core/calibrated.py): fn takes the inputs' statistics and the SVD cache


METHODS: dict[str, Method] = {}
_CLUSTER = re.compile(r"cluster(\d+)")
# Methods with a number in the name (asvd0.25): (pattern, factory(match, name) -> Method), added by their modules.
FAMILIES: list[tuple[re.Pattern, Callable]] = []


def register_method(name: str, *, amount: str, needs_svd: bool, help: str, top_only: bool = False):
    def deco(fn):
        METHODS[name] = Method(name, fn, amount, needs_svd, help, top_only)
        return fn

    return deco


def get_method(name: str) -> Method:
    """The registered method, or clusterC made for this C (never added to the registry: it lists what is declared)."""
    if name not in METHODS and (m := _CLUSTER.fullmatch(name)) and int(m.group(1)) >= 1:
        c = int(m.group(1))
        return Method(name, _clustered, "rank", True, f"cluster the rows into {c} groups, top-k of each", clusters=c)
    for pattern, make in FAMILIES:
        if name not in METHODS and (m := pattern.fullmatch(name)):
            return make(m, name)
    if name not in METHODS:
        raise UserError(f"unknown edit method {name!r}: use one of {', '.join(METHODS)}, clusterC (C = 2, 4, 8, ...) "
                        "or asvdA (A the exponent, e.g. asvd1)")
    return METHODS[name]


def _factors(svd: SVD, idx: slice) -> Reduced:
    # Split sqrt(S) across both factors: balanced magnitudes keep fp16/bf16 factor storage accurate.
    root = svd.S[idx].sqrt()
    left = svd.U[:, idx] * root
    right = root[:, None] * svd.Vh[idx]
    return Reduced(left=left, right=right, rank=len(root))


@register_method("svd", amount="rank", needs_svd=True, top_only=True, help="keep the top-k singular components (LASER)")
def _svd(weight, k, svd: SVD) -> Reduced:
    return _factors(svd, slice(0, k))


@register_method("bottom", amount="rank", needs_svd=True, help="keep only the k smallest singular components")
def _bottom(weight, k, svd: SVD) -> Reduced:
    n = len(svd.S)
    return _factors(svd, slice(n - k, n))


@register_method("prune", amount="fraction", needs_svd=False, help="keep the fraction rho of entries with largest |w|")
def _prune(weight, rho, svd=None) -> Reduced:
    w = weight.detach()
    keep = max(1, math.floor(Fraction(repr(float(rho))) * w.numel()))
    idx = w.abs().flatten().topk(keep).indices
    mask = torch.zeros(w.numel(), dtype=torch.bool, device=w.device)
    mask[idx] = True
    return Reduced(dense=w * mask.view_as(w))


@register_method("zero", amount="none", needs_svd=False, help="remove the matrix (all zeros)")
def _zero(weight, amount=None, svd=None) -> Reduced:
    return Reduced(dense=torch.zeros_like(weight), rank=0)


def mp_median(beta: float, points: int = 4001) -> float:
    """The median of the Marchenko-Pastur law of aspect ratio beta in (0, 1] (the eigenvalues of Z Z^T / n for an
    m x n matrix Z of unit-variance noise, beta = m / n), by quadrature in t = a + (b - a)(1 - cos u) / 2, which
    smooths the density's square-root ends."""
    a, b = (1 - math.sqrt(beta)) ** 2, (1 + math.sqrt(beta)) ** 2
    u = torch.linspace(0, math.pi, points, dtype=torch.float64)
    t = a + (b - a) * (1 - torch.cos(u)) / 2
    dt = (b - a) * torch.sin(u) / 2
    dens = torch.sqrt(((b - t) * (t - a)).clamp_min(0)) / (2 * math.pi * beta * t.clamp_min(1e-300))
    f = dens * dt
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum((f[1:] + f[:-1]) / 2 * (u[1] - u[0]), 0)])
    cdf = cdf / cdf[-1]
    i = int(torch.searchsorted(cdf, torch.tensor([0.5], dtype=torch.float64)))
    w = float((0.5 - cdf[i - 1]) / (cdf[i] - cdf[i - 1]))
    return float(t[i - 1] + w * (t[i] - t[i - 1]))


def noise_sigma(weight: torch.Tensor, singular_values: torch.Tensor | None = None) -> float:
    """Gavish & Donoho's (2014) robust noise level: the median singular value over sqrt(n * mu_beta), mu_beta the
    Marchenko-Pastur median (n the larger side, beta = m / n). A signal of rank well under half of min(m, n)
    barely moves the median, where it inflates the entries' standard deviation."""
    m, n = sorted(weight.shape)
    s = singular_values if singular_values is not None else torch.linalg.svdvals(weight.detach().double())
    return float(s.double().median()) / math.sqrt(n * mp_median(m / n))


def mp_threshold(weight: torch.Tensor, singular_values: torch.Tensor | None = None) -> float:
    """The Marchenko-Pastur bulk edge sigma * (sqrt(m) + sqrt(n)): the largest singular value an m x n matrix of
    i.i.d. noise of std sigma tends to. sigma is the robust estimate `noise_sigma` (earlier versions took the std of
    all entries, signal included, which moves the edge up with the signal)."""
    m, n = weight.shape
    return noise_sigma(weight, singular_values) * (math.sqrt(m) + math.sqrt(n))


@register_method("mp", amount="none", needs_svd=True, help="keep components above the Marchenko-Pastur edge")
def _mp(weight, amount, svd: SVD) -> Reduced:
    k = max(1, int((svd.S > mp_threshold(weight, svd.S)).sum()))
    return _factors(svd, slice(0, k))


def _clustered(rows: torch.Tensor, amount, clusters) -> Reduced:
    """Clustered LASER: each group of rows (core/clusters.py) replaced by its own top-k, k = max(1, floor(rho *
    min(group size, n))) (k=K: K, capped at the group's rank); `clusters` holds those top-k. `rows` is out x in."""
    blocks = []
    for idx, svd in zip(clusters.groups, clusters.svds):
        f = _factors(svd, slice(0, len(svd.S)))
        blocks.append((idx, f.left, f.right))
    return Reduced(blocks=blocks, rank=sum(left.shape[1] for _, left, _ in blocks))

