"""`laser search` against a plain loop over the same candidates and rows, in one run.

    python benchmarks/sweep_speed.py [--model demo] [--task bb_wikidata] [--layers 22-29]
                                     [--rhos 0.1,0.01] [--limit 150]

The plain loop applies each edit, runs a full batched forward of the whole model (HF logits at every
position), and restores. Both start with an empty in-memory SVD cache. It prints both times, their
ratio, and every candidate whose metrics differ (there should be none).
"""

import argparse
import tempfile
import time

from laserlm import get_layout, load_model
from laserlm.core.edits import parse_layers, edited
from laserlm.evaluation.evaluate import Prepared
from laserlm.evaluation.scoring import Scorer
from laserlm.sweep.sweeper import Sweeper, grid
from laserlm.sweep.store import ResultStore
from laserlm.core.svd import SVDCache
from laserlm.evaluation.tasks import load_task


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo")
    ap.add_argument("--task", default="bb_wikidata")
    ap.add_argument("--types", default="mlp_in,mlp_out")
    ap.add_argument("--layers", default="22-29")
    ap.add_argument("--rhos", default="0.1,0.01")
    ap.add_argument("--limit", type=int, default=150)
    args = ap.parse_args()
    loaded = load_model(args.model)
    model, layout = loaded.model, get_layout(loaded.model)
    rows = load_task(args.task).select("val", 0, args.limit)
    cands = grid(args.types.split(","), parse_layers(args.layers, args.layers),
                 [float(r) for r in args.rhos.split(",")], ["svd"])

    with tempfile.TemporaryDirectory() as tmp:
        fast = Prepared(Scorer(model, loaded.tokenizer), rows)
        sweeper = Sweeper(model, layout, fast, ResultStore(f"{tmp}/r.jsonl"), {}, "val", SVDCache(disk=None))
        t0 = time.perf_counter()
        sweeper.sweep(cands)  # the base model's row comes with it
        t_search = time.perf_counter() - t0
        ours = {str(c): sweeper.done([c])["metrics"] for c in cands}

    plain_scorer = Scorer(model, loaded.tokenizer)
    plain_scorer.fast = False  # the HF forward (its head fed the scored positions), no prefix cache
    plain_scorer.trees = False  # one sequence per row
    plain = Prepared(plain_scorer, rows)
    cache = SVDCache(disk=None)
    t0 = time.perf_counter()
    plain.score()
    theirs = {}
    for c in cands:
        with edited(model, [c], layout=layout, svd_cache=cache):
            theirs[str(c)] = plain.score().metrics
    t_loop = time.perf_counter() - t0

    differ = [c for c in ours if ours[c]["top1"] != theirs[c]["top1"] or ours[c]["top10"] != theirs[c]["top10"]
              or abs(ours[c]["logloss"] - theirs[c]["logloss"]) > 1e-4]
    print(f"{args.model} on {args.task}: {len(cands)} candidates + base, {len(rows)} val rows")
    print(f"  laser search sweep : {t_search:7.1f} s")
    print(f"  plain full loop    : {t_loop:7.1f} s")
    print(f"  speed-up           : {t_loop / t_search:7.2f}x")
    print(f"  candidates whose metrics differ: {differ or 'none'}")
    best = max(ours, key=lambda c: (ours[c]["top1"], -ours[c]["logloss"]))
    print(f"  best: {best} top1 {ours[best]['top1']:.4f}")


if __name__ == "__main__":
    main()
