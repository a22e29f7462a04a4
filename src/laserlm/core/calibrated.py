"""Data-aware rank reduction: SVD-LLM's truncation-aware whitening and ASVD's activation-aware scaling.

Both take the statistics of a matrix's inputs on a calibration set as given (gathering them runs the model, and
belongs to evaluation/calibration.py); here is only the linear algebra. For W (out x in) and calibration inputs
X (tokens x in):

- whiten: with S S^T = X^T X, the rank-k W' that minimises ||(W - W') X^T||_F is (W S)_k S^-1, where (W S)_k is
  the truncated SVD of W S (SVD-LLM, Wang et al., ICLR 2025, Theorem 3.2). Stored as U_k sqrt(Sigma_k) and
  sqrt(Sigma_k) V_k^T S^-1.
- asvd: with s_j = mean |x_j| ** alpha per input channel, W' = (W diag(s))_k diag(s)^-1 (ASVD, Yuan et al., 2023).

The rank rule is the project's (core.ranks.rank_for), so `whiten/mlp_out:5:0.01` keeps the k of `mlp_out:5:0.01`.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from ..errors import UserError
from .methods import FAMILIES, METHODS, Method, Reduced

ASVD_ALPHA = 0.5  # ASVD's default exponent of the mean |x| scaling
EIG_FLOOR = 1e-6  # the non-PD fallback floors eigenvalues at this fraction of the largest
SCALE_FLOOR = 1e-6  # asvd: a dead channel's scale is floored at this fraction of the largest


@dataclass
class InputStats:
    """What a matrix's inputs were on a calibration set: the mean of x x^T (in x in, float64), the mean |x| per
    channel (float64), the number of tokens, and `key`, the identity of the model, calibration set and dtype they
    came from. The Gram matrix may live on disk (`path`) and is read only when a reduction needs it."""

    abs_mean: torch.Tensor
    count: int
    key: str
    gram_tensor: torch.Tensor | None = None
    path: Path | None = None
    notes: list = field(default_factory=list)

    @property
    def gram(self) -> torch.Tensor:
        if self.gram_tensor is not None:
            return self.gram_tensor
        from safetensors.torch import load_file

        return load_file(self.path)["gram"]


@dataclass
class Whitening:
    """S with S S^T = the Gram matrix, and how to apply S^-1 on the right: a triangular solve for the Cholesky
    factor, or the eigenvectors and floored eigenvalues of the fallback."""

    S: torch.Tensor
    fallback: bool
    eigvecs: torch.Tensor | None = None
    inv_root: torch.Tensor | None = None

    def unwhiten(self, B: torch.Tensor) -> torch.Tensor:
        """B S^-1, in float64."""
        B = B.to(torch.float64)
        if not self.fallback:
            return torch.linalg.solve_triangular(self.S, B, upper=False, left=False)
        return ((B @ self.eigvecs) * self.inv_root[None, :]) @ self.eigvecs.mT

    def to(self, device) -> "Whitening":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Whitening(self.S.to(device), self.fallback, move(self.eigvecs), move(self.inv_root))


def whitening(gram: torch.Tensor) -> Whitening:
    """S S^T = gram by Cholesky in float64. A Gram matrix that is not positive definite (dead or collinear input
    channels, fewer calibration tokens than channels) falls back to its eigendecomposition Q diag(l) Q^T with
    each eigenvalue floored at EIG_FLOOR times the largest: S = Q diag(sqrt(l)), symmetric-positive, invertible."""
    g = gram.to(torch.float64)
    g = (g + g.mT) / 2
    L, info = torch.linalg.cholesky_ex(g)
    if int(info) == 0 and bool(torch.isfinite(L).all()) and L.diagonal().min() > 0:
        return Whitening(L, fallback=False)
    vals, vecs = torch.linalg.eigh(g)
    floor = max(float(vals.max()), 1e-30) * EIG_FLOOR
    vals = vals.clamp_min(floor)
    root = vals.sqrt()
    return Whitening(vecs * root[None, :] @ vecs.mT, fallback=True, eigvecs=vecs, inv_root=1 / root)


_memo: OrderedDict[tuple, Whitening] = OrderedDict()


def _whitening_of(stats: InputStats) -> Whitening:
    """A sweep reduces one matrix at several ranks in a row: its factor is computed once (a few kept)."""
    key = (stats.key, id(stats))
    if key in _memo:
        _memo.move_to_end(key)
        return _memo[key]
    w = _memo[key] = whitening(stats.gram)
    if w.fallback and "not positive definite" not in stats.notes:
        stats.notes.append("not positive definite")
    while len(_memo) > 4:
        _memo.popitem(last=False)
    return w


def _top_k(matrix: torch.Tensor, k: int, cache) -> tuple[torch.Tensor, torch.Tensor]:
    """U_k sqrt(S_k) and sqrt(S_k) V_k^T of `matrix`, its SVD taken from (and kept in) the SVD cache."""
    svd = cache.get(matrix.contiguous(), k)
    root = svd.S[:k].sqrt()
    return svd.U[:, :k] * root, root[:, None] * svd.Vh[:k]


def whitened(weight: torch.Tensor, stats: InputStats) -> tuple[torch.Tensor, Whitening]:
    """W S in float32 (the matrix whose SVD the whitening truncates; the allocation reads the same one), and S."""
    wh = _whitening_of(stats).to(weight.device)
    return (weight.detach().to(torch.float64) @ wh.S).to(torch.float32), wh


def asvd_scaled(weight: torch.Tensor, stats: InputStats, alpha: float = ASVD_ALPHA) -> tuple[torch.Tensor, torch.Tensor]:
    """W diag(s) in float32 and s = mean |x| ** alpha per input channel (float64, dead channels floored)."""
    s = stats.abs_mean.to(device=weight.device, dtype=torch.float64)
    s = s.clamp_min(max(float(s.max()), 1e-30) * SCALE_FLOOR) ** alpha
    return (weight.detach().to(torch.float64) * s[None, :]).to(torch.float32), s


def whiten(weight: torch.Tensor, k: int, stats: InputStats, cache) -> Reduced:
    """`weight` is out x in; the factors come back in float32 (the SVD cache's precision)."""
    scaled, wh = whitened(weight, stats)
    left, right = _top_k(scaled, k, cache)
    right = wh.unwhiten(right).to(torch.float32)
    return Reduced(left=left, right=right, rank=k)


def asvd(weight: torch.Tensor, k: int, stats: InputStats, cache, alpha: float = ASVD_ALPHA) -> Reduced:
    """`weight` is out x in; scaling by the channels' mean |x| ** alpha, undone in the right factor."""
    scaled, s = asvd_scaled(weight, stats, alpha)
    left, right = _top_k(scaled, k, cache)
    return Reduced(left=left, right=(right.to(torch.float64) / s[None, :]).to(torch.float32), rank=k)


def _register(name: str, fn, help: str) -> None:
    METHODS[name] = Method(name, fn, "rank", True, help, top_only=True, needs_stats=True)


_register("whiten", whiten, "SVD-LLM: truncation-aware whitening by calibration inputs (needs calibration data, "
                            "default: the shipped text)")
_register("asvd", asvd, "ASVD: scale input channels by mean |x|^0.5 on calibration inputs, then top-k (asvdA: "
                      "exponent A, e.g. asvd1)")
_ASVD = re.compile(r"asvd(\d+(?:\.\d+)?)")


def asvd_alpha(method: str) -> float | None:
    """The exponent of an asvd method name (asvd: 0.5, asvd1: 1.0), None for another method."""
    if method == "asvd":
        return ASVD_ALPHA
    m = _ASVD.fullmatch(method)
    return float(m.group(1)) if m else None


def _asvd_with(match, name: str) -> Method:
    alpha = float(match.group(1))
    if not 0 < alpha <= 4:
        raise UserError(f"{name}: the ASVD exponent {alpha:g} is outside (0, 4]; ASVD's own range is 0.1 to 1")
    return Method(name, partial(asvd, alpha=alpha), "rank", True, f"ASVD with exponent {alpha:g}", top_only=True,
                  needs_stats=True)


FAMILIES.append((_ASVD, _asvd_with))


def input_stats(target, edit) -> InputStats:
    """The statistics gathered for `target`'s inputs, or a one-line refusal naming the fix."""
    if target.index is not None:
        raise UserError(f"{edit} names one expert's matrix ({target.name}[{target.index}]): the data-aware methods "
                        "need each expert's own inputs, which laserlm does not gather; use svd/ on experts")
    stats = getattr(target.module, "laser_input_stats", None)
    if stats is None:
        raise UserError(f"{edit} needs calibration statistics of {target.name}'s inputs: laser's commands gather "
                        "them for you; from Python call laserlm.calibrate(model, tokenizer, "
                        "edits) first")
    return stats
