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


METHODS: dict[str, Method] = {}
_CLUSTER = re.compile(r"cluster(\d+)")


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
    if name not in METHODS:
        raise UserError(f"unknown edit method {name!r}: use one of {', '.join(METHODS)}, or clusterC (C = 2, 4, 8, ...)")
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


def mp_threshold(weight: torch.Tensor) -> float:
    """The Marchenko-Pastur bulk edge sigma * (sqrt(m) + sqrt(n)) for noise of the entries' std.

    sigma is estimated as the standard deviation of all entries (population, not sample): the
    largest singular value of an m x n matrix of i.i.d. noise of std sigma tends to this edge.
    """
    m, n = weight.shape
    sigma = weight.detach().double().std(correction=0).item()
    return sigma * (math.sqrt(m) + math.sqrt(n))


@register_method("mp", amount="none", needs_svd=True, help="keep components above the Marchenko-Pastur edge")
def _mp(weight, amount, svd: SVD) -> Reduced:
    k = max(1, int((svd.S > mp_threshold(weight)).sum()))
    return _factors(svd, slice(0, k))


def _clustered(rows: torch.Tensor, amount, clusters) -> Reduced:
    """Clustered LASER: each group of rows (core/clusters.py) replaced by its own top-k, k = max(1, floor(rho *
    min(group size, n))) (k=K: K, capped at the group's rank); `clusters` holds those top-k. `rows` is out x in."""
    blocks = []
    for idx, svd in zip(clusters.groups, clusters.svds):
        f = _factors(svd, slice(0, len(svd.S)))
        blocks.append((idx, f.left, f.right))
    return Reduced(blocks=blocks, rank=sum(left.shape[1] for _, left, _ in blocks))
