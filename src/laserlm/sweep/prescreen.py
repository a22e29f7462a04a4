"""Cheap orderings of the candidates before any evaluation (`--prescreen mp|snr|grad`, with `--budget N`).

- `mp`: data-free. A candidate scores the share of the energy it removes that lies under the matrix's
  Marchenko-Pastur noise edge: removing noise first (laserRMT's reading of the spectrum).
- `snr`: data-free. Matrices by their signal-to-noise ratio, energy above the edge over energy below,
  lowest first (Spectrum's ranking); within a matrix, the rank closest to the number of components above the
  edge first.
- `grad`: one backward pass of the paper's loss on a few val rows gives G = dL/dW for every matrix; the
  derivative with respect to singular value i is g_i = u_i' G v_i, so removing the components past k changes
  the loss by about -sum_{i>=k} s_i g_i (first order). Candidates predicted to lower the loss most come first
  (the ranking of Sreeram, Maalouf, Sharma & Rus, "Compress to Impress", 2025).

Edits that are not top-k SVD truncations (prune, zero, bottom, mp) have no such score and come last.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..core.edits import Edit
from ..core.layout import Layout
from ..core.methods import mp_threshold, rank_for
from ..core.svd import SVDCache

KINDS = ("mp", "snr", "grad")
PRESCREEN_FILE = "prescreen.json"
GRAD_ROWS = 32


def _spectral(kind: str, weight: torch.Tensor, svd) -> Callable[[int], float]:
    """A matrix's data-free score of keeping rank k."""
    s = svd.S.double()
    edge = mp_threshold(weight)
    above = s > edge
    if kind == "mp":
        def score(k):
            removed = s[k:]
            total = (removed ** 2).sum().item()
            return (removed[removed <= edge] ** 2).sum().item() / total if total > 0 else 0.0
        return score
    # snr: the matrix's SNR decides (low first), closeness of k to the MP rank breaks ties
    snr = (s[above] ** 2).sum().item() / max((s[~above] ** 2).sum().item(), 1e-30)
    k_mp = max(1, int(above.sum()))
    return lambda k: -math.log10(max(snr, 1e-30)) - 1e-3 * abs(math.log(k / k_mp))


def _scored(request, examples) -> bool:
    """The paper's loss counts the answer of a cloze row and the correct choice of a choice row."""
    i, role, sub = request.key
    return role == "main" or (role == "choice" and sub == examples[i].label)


def _gradient(layout: Layout, cache: SVDCache, keys: list[tuple[str, int]], prepared) -> dict:
    """Each matrix's first-order score of keeping rank k, from one backward pass over `prepared`'s rows:
    sum_{i>=k} s_i g_i with g_i = u_i' G v_i, minus the predicted change of the loss."""
    scorer, model = prepared.scorer, prepared.scorer.model
    weights = {key: layout.target(*key).weight for key in keys}
    wanted = {id(w) for w in weights.values()}
    saved = {p: p.requires_grad for p in model.parameters()}
    out = {}
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in wanted)
            p.grad = None
        n_targets = sum(len(r.targets) for r in prepared.requests if _scored(r, prepared.examples))
        with torch.enable_grad():
            for batch, inputs in zip(prepared.batches, prepared.collated()):
                reqs = [prepared.requests[i] for pack in batch for i in pack]
                rows = [(*inputs.at(j, pos), tok) for j, r in enumerate(reqs) if _scored(r, prepared.examples)
                        for pos, tok in r.targets]
                if not rows:
                    continue
                logits = scorer.full_logits(inputs)
                b, pos, tok = (torch.tensor(x, device=logits.device) for x in zip(*rows))
                picked = logits[b, pos].float().log_softmax(-1).gather(-1, tok[:, None])
                (-picked.sum() / n_targets).backward()
        for key, w in weights.items():  # once per matrix, whatever the number of amounts
            svd = cache.get(w)
            g = ((svd.U.T @ w.grad.to(svd.U.device, svd.U.dtype)) * svd.Vh).sum(-1)
            out[key] = lambda k, c=svd.S * g: c[k:].sum().item()
    finally:
        for p, flag in saved.items():
            p.grad = None
            p.requires_grad_(flag)
    return out


def prescreen(kind: str, layout: Layout, cache: SVDCache, candidates: list[Edit], prepared=None) -> list[tuple[Edit, float | None]]:
    """The candidates, best first, with their scores (None: not rankable, last)."""
    rankable = [c for c in candidates if c.method == "svd"]
    keys = list(dict.fromkeys((c.type, c.layer) for c in rankable))
    if kind == "grad":
        by_matrix = _gradient(layout, cache, keys, prepared)
    else:
        by_matrix = {key: _spectral(kind, w, cache.get(w)) for key in keys for w in [layout.target(*key).weight]}
    scores = {c: by_matrix[(c.type, c.layer)](rank_for(c.amount, layout.target(c.type, c.layer).shape))
              for c in rankable}
    order = sorted(rankable, key=lambda c: (-scores[c], str(c)))
    return [(c, scores[c]) for c in order] + [(c, None) for c in candidates if c.method != "svd"]
