"""LASER at real scale without a download: a Llama-2-7B-shaped model with random weights.

    python benchmarks/scale.py                       # GPU: 32 layers, d=4096, MLP 11008, bfloat16
    python benchmarks/scale.py --device cpu --small  # the same code path on a small shape, as a smoke test

It sweeps mlp_in,mlp_out x layers 24-31 x the paper's seven rho on 300 bb_wikidata val rows and prints
seconds per candidate, the SVD seconds (computed up front, so the sweep time is the evaluation alone), and
the peak GPU memory against the weights. Goals on an H100: peak <= weights + 4 GB, <= 0.25 s per candidate.
The tokenizer is a 32,000-token BPE trained here on the task's own text, so rows have realistic lengths.
"""

from __future__ import annotations

import argparse
import time

import torch

from laserlm import get_layout
from laserlm.core.edits import parse_layers
from laserlm.core.svd import SVDCache
from laserlm.evaluation.evaluate import Prepared
from laserlm.evaluation.scoring import Scorer
from laserlm.evaluation.tasks import load_task
from laserlm.sweep.store import ResultStore
from laserlm.sweep.sweeper import PAPER_RHOS, Sweeper, grid
from random_model import build_model, train_tokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--small", action="store_true", help="8 layers, d=256: a CPU smoke test of the same path")
    ap.add_argument("--layers", help="default 24-31 (4-7 with --small)")
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--max-tokens", type=int)
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    rows = load_task("bb_wikidata").select("val", 0, args.limit)
    t0 = time.perf_counter()
    tok = train_tokenizer([r.prompt + " " + r.answers[0] for r in load_task("bb_wikidata").select("all", 0, None)],
                          32000)
    print(f"tokenizer: {len(tok)} tokens, trained in {time.perf_counter() - t0:.1f} s")
    model = build_model("small" if args.small else "llama2-7b", dtype, args.device)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    layout = get_layout(model)
    layers = list(parse_layers(args.layers or ("4-7" if args.small else "24-31"), "--layers"))
    cands = grid(["mlp_in", "mlp_out"], layers, list(PAPER_RHOS), ["svd"])
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    cache = SVDCache(disk=None)
    t0 = time.perf_counter()
    for t in ("mlp_in", "mlp_out"):
        for layer in layers:
            cache.get(layout.target(t, layer).weight)
    if cuda:
        torch.cuda.synchronize()
    svd_secs = time.perf_counter() - t0
    prepared = Prepared(Scorer(model, tok, max_tokens=args.max_tokens), rows)
    sweeper = Sweeper(model, layout, prepared, ResultStore(None), {"bench": "scale"}, "val", cache)
    sweeper.sweep([])  # the base pass
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    sweeper.sweep(cands)
    if cuda:
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    tokens = sum(len(r.ids) for r in prepared.requests)
    print(f"model: {model.config.num_hidden_layers} layers, d={model.config.hidden_size}, {args.dtype}, "
          f"{weights / 1e9:.2f} GB of weights on {args.device}")
    print(f"rows: {len(rows)} val rows, {tokens} tokens; candidates: {len(cands)} (layers {layers[0]}-{layers[-1]})")
    print(f"SVD: {svd_secs:.1f} s for {2 * len(layers)} matrices")
    print(f"sweep: {secs:.1f} s, {secs / len(cands):.3f} s per candidate")
    summary = f"SUMMARY scale: {secs / len(cands):.3f} s/candidate, SVD {svd_secs:.1f} s for {2 * len(layers)} matrices"
    if cuda:
        peak = torch.cuda.max_memory_allocated()
        print(f"peak GPU memory: {peak / 1e9:.2f} GB = weights + {(peak - weights) / 1e9:.2f} GB")
        summary += f", peak {peak / 1e9:.2f} GB = weights {weights / 1e9:.2f} + {(peak - weights) / 1e9:.2f} GB"
    print(summary)


if __name__ == "__main__":
    main()
