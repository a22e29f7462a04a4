"""The paper's analyses: spectra and effective rank, which answers flip, what the removed components
predict, the metric against reduction, and the cost in perplexity."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core.edits import Edit, edited
from ..evaluation.evaluate import Prepared
from ..core.ranks import rank_for

# Words the paper found the base model falls back to on facts LASER corrects ("the", "of", ...).
GENERIC_WORDS = frozenset(
    "the a an of in to and or is was are be it its this that as at by for from on with , . ' \" - : ; "
    "he she his her they their not but also which who".split()
)
CURVE_RHOS = (1.0, 0.9, 0.75, 0.5, 0.25, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 0.0005)


def effective_rank(s: torch.Tensor) -> float:
    """Roy & Vetterli (2007): exp of the Shannon entropy of the normalised singular values s/||s||_1."""
    p = s.double().abs()
    p = p[p > 0] / p.sum()
    return math.exp(-(p * p.log()).sum().item())


def spectrum(layout, cache, types: list[str], layers) -> list[dict]:
    out = []
    for layer in layers:
        for t in types:
            target = layout.target(t, layer)
            s = cache.get(target.weight).S.cpu()
            out.append({"type": t, "layer": layer, "shape": list(target.shape),
                        "effective_rank": effective_rank(s), "max_rank": min(target.shape),
                        "singular_values": [round(v, 6) for v in s.tolist()]})
    return out


@dataclass
class Flips:
    both_right: list[int]
    corrected: list[int]  # wrong before the edit, right after
    newly_wrong: list[int]
    both_wrong: list[int]

    def counts(self) -> dict:
        return {k: len(v) for k, v in self.__dict__.items()}


def correct_flag(record: dict) -> bool:
    return bool(record["top1"] if "top1" in record else record["acc"])


def flips(base_records: list[dict], edit_records: list[dict]) -> Flips:
    out = Flips([], [], [], [])
    for i, (b, e) in enumerate(zip(base_records, edit_records)):
        key = {(True, True): "both_right", (False, True): "corrected",
               (True, False): "newly_wrong", (False, False): "both_wrong"}[(correct_flag(b), correct_flag(e))]
        getattr(out, key).append(i)
    return out


def generic_share(tokens: list[str]) -> float:
    """The share of predicted tokens that are generic high-frequency words."""
    words = [t.strip().lower() for t in tokens]
    return sum(w in GENERIC_WORDS for w in words) / len(words) if words else float("nan")


def complement(edit: Edit, shape) -> Edit:
    """The `bottom/` edit keeping exactly the components that `edit` (top-k) removes."""
    k = rank_for(edit.amount, shape)
    return Edit("bottom", edit.type, edit.layer, f"k={max(1, min(shape) - k)}")


def records_with(model, layout, prepared: Prepared, edits: list[Edit], cache) -> list[dict]:
    with edited(model, edits, layout=layout, svd_cache=cache):
        return prepared.score().records


def curve(model, layout, prepared: Prepared, type_: str, layer: int, cache, rhos=CURVE_RHOS) -> list[dict]:
    """Metrics against the fraction of rank removed for one matrix (the paper's Figure 8)."""
    rows = []
    for rho in rhos:
        edits = [] if rho == 1.0 else [Edit("svd", type_, layer, rho)]
        with edited(model, edits, layout=layout, svd_cache=cache):
            metrics = prepared.score().metrics
        rows.append({"rho": rho, "removed": 1 - rho, **metrics})
    return rows


def curve_landmarks(rows: list[dict], metric: str) -> dict:
    """Where the metric first beats the unedited model, where it peaks, and where it first falls below."""
    base = rows[0][metric]
    first_up = next((r["removed"] for r in rows[1:] if r[metric] > base), None)
    first_down = next((r["removed"] for r in rows[1:] if r[metric] < base), None)
    best = max(rows, key=lambda r: (r[metric], -r.get("logloss", 0)))
    return {"base": base, "first_improves_at_removed": first_up, "best_removed": best["removed"],
            "best": best[metric], "first_degrades_at_removed": first_down}


def seed_spread(model, layout, prepared: Prepared, edits: list[Edit], seeds) -> dict:
    """The base model, the edits with the exact SVD, and the edits as the authors' code makes them (svd_lowrank,
    q=k, niter=2, their rank rule) under each seed: how far their randomized SVD alone moves each metric."""
    from ..core.svd import SVDCache

    base = prepared.score().metrics
    with edited(model, edits, layout=layout, svd_cache=SVDCache(disk=None)):
        exact = prepared.score().metrics
    rows = []
    for seed in seeds:
        with edited(model, edits, layout=layout, svd_cache=SVDCache(disk=None, mode="authors", seed=seed)):
            rows.append({"seed": seed, "metrics": prepared.score().metrics})
    spread = {}
    for name in exact:
        values = [r["metrics"][name] for r in rows]
        mean = sum(values) / len(values)
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        spread[name] = {"mean": mean, "sd": sd, "min": min(values), "max": max(values)}
    return {"base": base, "exact": exact, "seeds": rows, "spread": spread}


SIMILARITY_RHOS = (0.9, 0.8, 0.6, 0.4, 0.2, 0.1, 0.05, 0.01)


def answer_similarity(model, layout, prepared: Prepared, edit: Edit, rows: list[int], cache, rhos=SIMILARITY_RHOS):
    """The paper's Figure 4(b): on `rows` (those the edit corrects), the cosine between the true answer's first token
    and the token predicted with only the top-k components kept, and with only the removed ones, for each fraction
    rho kept. Similarity is the cosine of the two tokens' input embeddings (the model's own: no download)."""
    emb = model.get_input_embeddings().weight.detach().float()
    shape = layout.target(edit.type, edit.layer).shape
    sub = Prepared(prepared.scorer, [prepared.examples[i] for i in rows], prepared.metrics)
    gold = [rec["continuations"][0]["ids"][0] for rec in sub.score().records]

    def mean_cosine(edits):
        preds = [r["pred_token"] for r in records_with(model, layout, sub, edits, cache)]
        cos = torch.nn.functional.cosine_similarity(emb[preds], emb[gold], dim=-1)
        return cos.mean().item(), sum(p == g for p, g in zip(preds, gold)) / len(gold)

    out = []
    for rho in rhos:
        top = Edit("svd", edit.type, edit.layer, rho)
        top_cos, top_hit = mean_cosine([top])
        bottom_cos, bottom_hit = mean_cosine([complement(top, shape)])
        out.append({"rho": rho, "top": top_cos, "bottom": bottom_cos, "top_top1": top_hit, "bottom_top1": bottom_hit})
    return out
