"""The search against its limit, layer by layer, in one run on the same rows.

    python benchmarks/limit.py                                    # demo, bb_wikidata, 400 val rows, all layers
    python benchmarks/limit.py --layers 20-29 --rhos 0.1,0.01 --device cuda --dtype bfloat16

For each layer l:
- the limit: one forward of blocks l..L over the val rows (the states entering l cached, through the real
  HF modules with the blocks below l skipped, as the search runs them) plus one pass of the LM head over
  the scored positions of all rows;
- the search's time per candidate at l (edit applied from the cached SVD, the same forward, the metrics,
  the store, the edit undone), measured by the real sweep over that layer's candidates.
The ratio per layer, and over the grid (every layer has the same number of candidates), is what the
search's overheads cost above the limit. It can fall below 1: an MLP candidate replays block l's attention
output, which the limit recomputes. SVDs are computed before the timing (once per matrix, cached on
disk across runs) and reported apart. Per-candidate time does not depend on the number of rhos, so a
subset of the paper's rhos measures the same ratio in less time.
"""

from __future__ import annotations

import argparse
import time

import torch

from laserlm import get_layout, load_model
from laserlm.core.edits import parse_layers
from laserlm.core.svd import SVDCache
from laserlm.evaluation.evaluate import Prepared
from laserlm.evaluation.metrics import choose_metrics
from laserlm.evaluation.scoring import Scorer
from laserlm.evaluation.tasks import load_task
from laserlm.sweep.prefix import PrefixCache
from laserlm.sweep.store import ResultStore
from laserlm.sweep.sweeper import PAPER_RHOS, Sweeper, grid


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def limit_time(scorer: Scorer, prefix: PrefixCache, prepared: Prepared, collated, hidden, layer: int) -> float:
    """Blocks layer..L and the head at the scored positions, for every batch: no edit, no metric."""
    device = next(scorer.model.parameters()).device
    _sync(device)
    t0 = time.perf_counter()
    gathered = []
    for batch, c, h in zip(prepared.batches, collated, hidden):
        with prefix.replay(layer, h):
            states = scorer.hidden(c)
        rows, cols = [], []
        for j, r in enumerate(prepared.requests[i] for pack in batch for i in pack):
            for pos in [p for p, _ in r.targets] + ([r.topk_pos] if r.topk_pos is not None else []):
                row, col = c.at(j, pos)
                rows.append(row)
                cols.append(col)
        gathered.append(states[torch.tensor(rows, device=device), torch.tensor(cols, device=device)])
    scorer.head(torch.cat(gathered)).float().log_softmax(-1)  # one pass over the head's weight for all rows
    _sync(device)
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--task", default="bb_wikidata")
    p.add_argument("--limit", type=int, default=400, help="val rows (default 400)")
    p.add_argument("--layers", default="all")
    p.add_argument("--types", default="mlp_in,mlp_out")
    p.add_argument("--rhos", default=",".join(map(str, PAPER_RHOS)))
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--repeats", type=int, default=2, help="timed forwards per layer for the limit (the best counts)")
    args = p.parse_args()
    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    model, device = loaded.model, next(loaded.model.parameters()).device
    task = load_task(args.task)
    val = task.select("val", 0, args.limit)
    scorer = Scorer(model, loaded.tokenizer)
    prepared = Prepared(scorer, val, choose_metrics("cloze", ["top1", "logloss"], False))
    layout = get_layout(model)
    layers = parse_layers(args.layers, "--layers") or range(layout.n_layers)
    types = layout.expand_type_list(args.types)
    rhos = [float(r) for r in args.rhos.split(",")]
    cache = SVDCache(disk=None)
    t0 = time.perf_counter()
    for layer in layers:
        for t in types:
            cache.get(layout.target(t, layer).weight)
    svd_secs = time.perf_counter() - t0
    prefix = PrefixCache(model, layout.blocks)
    collated = prepared.collated()
    print(f"{args.model} on {args.task}: {len(val)} val rows, {len(prepared.batches)} batches, {args.dtype} on "
          f"{device}; SVDs of {len(layers) * len(types)} matrices {svd_secs:.1f} s (once, then cached)")
    print("layer  limit_s  search_s/cand  ratio")
    total_limit = total_search = 0.0
    for layer in layers:
        hidden = [prefix.capture(layer, lambda c=c: scorer.hidden(c)) for c in collated]
        limit_time(scorer, prefix, prepared, collated, hidden, layer)  # warm-up
        lim = min(limit_time(scorer, prefix, prepared, collated, hidden, layer) for _ in range(args.repeats))
        cands = grid(types, [layer], rhos, ["svd"])
        sweeper = Sweeper(model, layout, prepared, ResultStore(None), {"bench": layer}, "val", cache)
        sweeper.walk = (layer, hidden)  # the states entering `layer`, as the search's walk has them
        _sync(device)
        t0 = time.perf_counter()
        sweeper.sweep(cands, base=False)
        _sync(device)
        per = (time.perf_counter() - t0) / len(cands)
        total_limit += lim
        total_search += per
        print(f"{layer:5d}  {lim:7.3f}  {per:13.3f}  {per / lim:5.2f}")
    print(f"grid   {total_limit:7.2f}  {total_search:13.2f}  {total_search / total_limit:5.2f}   "
          f"(sums over layers of one candidate each; every layer has {len(types) * len(rhos)} candidates)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
