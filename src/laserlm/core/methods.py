"""The method registry: each edit method maps one weight matrix to its replacement.

A method sees the matrix in its stored layout (GPT-2's Conv1D is in x out): every method here is
invariant under transposition, so no layout juggling is needed. Low-rank methods return factors,
so `laser apply --factorized` can store them as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import torch

from ..errors import UserError
from .svd import SVD


@dataclass
class Reduced:
    """The replacement of one matrix: W' = left @ right, or a dense matrix."""

    left: torch.Tensor | None = None
    right: torch.Tensor | None = None
    dense: torch.Tensor | None = None
    rank: int | None = None

    def matrix(self) -> torch.Tensor:
        return self.dense if self.dense is not None else self.left @ self.right


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable
    amount: str  # "rank": rho or k=K -> rank k; "fraction": rho only; "none": ignored
    needs_svd: bool
    help: str
    top_only: bool = False  # reads only the top-k components, so `--svd randomized` may serve it


METHODS: dict[str, Method] = {}


def register_method(name: str, *, amount: str, needs_svd: bool, help: str, top_only: bool = False):
    def deco(fn):
        METHODS[name] = Method(name, fn, amount, needs_svd, help, top_only)
        return fn

    return deco


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise UserError(f"unknown edit method {name!r}: use one of {', '.join(METHODS)}")
    return METHODS[name]


def rank_for(amount, shape) -> int:
    """k = max(1, floor(rho * min(m, n))), computed exactly (0.29 * 100 is 29, not 28); or k=K."""
    max_rank = min(shape)
    if isinstance(amount, str):  # "k=K"
        k = int(amount[2:])
        if k > max_rank:
            raise UserError(f"k={k} exceeds the maximum rank {max_rank} of a {shape[0]}x{shape[1]} matrix")
        return k
    return max(1, math.floor(Fraction(repr(float(amount))) * max_rank))


def authors_rank(amount, shape) -> int:
    """The authors' rank rule: `int(min(m, n) * (10 - rate) * 0.1)` in floating point with rate = 10 - 10 rho
    (src/laser/matrix_utils.py:43), no floor of 1: one less than ours whenever rho * min(m, n) is whole
    (rho = 0.01 of 1000 keeps 9, not 10). k=K is K."""
    if isinstance(amount, str):
        return rank_for(amount, shape)
    rate = float(f"{10 - 10 * float(amount):.10g}")  # the rate as their scripts write it: 9.9, 9.95, ...
    k = int(min(shape) * ((10 - rate) * 0.1))
    if k < 1:
        raise UserError(f"the authors' rank rule keeps 0 components of a {shape[0]}x{shape[1]} matrix at rho={amount:g} "
                        "(their code would fail there): use --svd exact or a larger rho")
    return k


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
