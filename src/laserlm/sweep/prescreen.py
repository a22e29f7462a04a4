"""Cheap orderings of the candidates before any evaluation (`--prescreen mp|snr|grad`, with `--budget N`).

- `mp`: data-free. A candidate scores the share of the energy it removes that lies under the matrix's
  Marchenko-Pastur noise edge: removing noise first (laserRMT's reading of the spectrum).
- `snr`: data-free. Matrices by their signal-to-noise ratio, energy above the edge over energy below,
  lowest first (Spectrum's ranking); within a matrix, the rank closest to the number of components above the
  edge first.
- `grad`: one backward pass of the paper's loss on a few val rows gives G = dL/dW for every matrix; the
  derivative with respect to singular value i is g_i = u_i' G v_i, so removing the components past k changes
  the loss by about -sum_{i>=k} s_i g_i (first order). Candidates predicted to lower the loss most come first
  (the ranking of Sreeram, Maalouf, Sharma & Rus, "Compress to Impress", 2025). Any other edit W -> W' (a
  clustered one, a pruning, ...) is ranked by the same first order, <G, W - W'>.
- `grad-matrix`: the follow-up's selection: matrices ranked by the gradient of their singular values (each by
  its best predicted loss decrease over the grid's amounts), and every candidate of the `budget` best matrices
  evaluated (their amounts and methods, clustered ones included).

With `mp` and `snr`, edits that are not top-k SVD truncations have no score and come last.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..core.edits import Edit, plan
from ..core.layout import Layout
from ..core.methods import mp_threshold
from ..core.svd import SVDCache

KINDS = ("mp", "snr", "grad", "grad-matrix")
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


def _gradient(layout: Layout, cache: SVDCache, keys: list[tuple[str, int]], prepared,
              others: list[Edit] = ()) -> tuple[dict, dict]:
    """Each matrix's first-order score of keeping rank k, from one backward pass over `prepared`'s rows:
    sum_{i>=k} s_i g_i with g_i = u_i' G v_i, minus the predicted change of the loss; and, for each of `others`
    (edits that are not top-k truncations), <G, W - W'>."""
    scorer, model = prepared.scorer, prepared.scorer.model
    weights = {key: layout.target(*key).weight for key in keys}
    for e in others:
        weights.setdefault((e.type, e.layer), layout.target(e.type, e.layer).weight)
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
                b, pos, tok = (torch.tensor(x, device=scorer.device) for x in zip(*rows))
                picked = scorer.gathered_logits(inputs, b, pos).log_softmax(-1).gather(-1, tok[:, None])
                (-picked.sum() / n_targets).backward()
        for key in keys:  # once per matrix, whatever the number of amounts
            w = weights[key]
            svd = cache.get(w)
            g = ((svd.U.T @ w.grad.to(svd.U.device, svd.U.dtype)) * svd.Vh).sum(-1)
            out[key] = lambda k, c=svd.S * g: c[k:].sum().item()
        direct = {}
        for e in others:
            step = plan(layout.model, [e], layout, cache)[0]
            w = step.target.weight
            new = step.reduce(cache).matrix().to(w.grad.device, torch.float32)
            direct[e] = (w.grad.float() * (w.detach().float() - new)).sum().item()
    finally:
        for p, flag in saved.items():
            p.grad = None
            p.requires_grad_(flag)
    return out, direct


def prescreen(kind: str, layout: Layout, cache: SVDCache, candidates: list[Edit], prepared=None) -> list[tuple[Edit, float | None]]:
    """The candidates, best first, with their scores (None: not rankable, last). For grad-matrix, grouped by
    matrix, the matrices best first."""
    gradient = kind in ("grad", "grad-matrix")
    rankable = [c for c in candidates if c.method == "svd"]
    others = [c for c in candidates if c.method != "svd"] if gradient else []
    keys = list(dict.fromkeys((c.type, c.layer) for c in rankable))
    direct: dict = {}
    if gradient:
        by_matrix, direct = _gradient(layout, cache, keys, prepared, others)
    else:
        by_matrix = {key: _spectral(kind, w, cache.get(w)) for key in keys for w in [layout.target(*key).weight]}
    scores = {c: by_matrix[(c.type, c.layer)](cache.rank_for(c.amount, layout.target(c.type, c.layer).shape))
              for c in rankable}
    scores.update(direct)
    if kind == "grad-matrix":
        best: dict[tuple[str, int], float] = {}
        for c, v in scores.items():
            best[(c.type, c.layer)] = max(v, best.get((c.type, c.layer), -math.inf))
        order = sorted(scores, key=lambda c: (-best[(c.type, c.layer)], (c.type, c.layer), -scores[c], str(c)))
        return [(c, scores[c]) for c in order]
    order = sorted(scores, key=lambda c: (-scores[c], str(c)))
    return [(c, scores[c]) for c in order] + [(c, None) for c in candidates if c not in scores]


def shortlist(ranked: list[tuple[Edit, float | None]], kind: str, budget: int | None) -> list[Edit]:
    """The candidates to evaluate: the `budget` best, or with grad-matrix every candidate of the `budget` best
    matrices."""
    order = [c for c, _ in ranked]
    if not budget:
        return order
    if kind != "grad-matrix":
        return order[:budget]
    matrices = list(dict.fromkeys((c.type, c.layer) for c in order))[:budget]
    return [c for c in order if (c.type, c.layer) in matrices]
