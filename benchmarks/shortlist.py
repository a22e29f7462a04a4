"""The full grid against the follow-up paper's gradient shortlist, and clustered LASER on that shortlist.

    python benchmarks/shortlist.py [--model demo] [--full-from runs/repro-full] [--matrices 4]

For each offline benchmark (bb_wikidata, bb_epistemic, truthfulqa, truthfulqa_mc1; paper protocol, its metric):
- (a) full grid: `mlp_in`, `mlp_out` x --layers x the authors' nine rho, selected on --limit val rows. With
  --full-from, read from a `laser reproduce` folder of those rows (its best.json and its sweep time), else swept here;
- (b) gradient shortlist: matrices ranked by the gradient of their singular values from one backward pass on
  --rows val rows (`--prescreen grad-matrix`), the --matrices best kept, their svd candidates scored on the same
  --rows rows, the best selected;
- (c) clustered LASER on that shortlist: svd, cluster2, cluster4, cluster8 on the shortlisted matrices, --rows rows.
Each selection is evaluated on the same --test-limit test rows, with the paired 95% interval against the base model.
It prints the test metric, the edit and the wall time of each.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from laserlm import Edit, edited, get_layout, load_model
from laserlm.core.edits import parse_layers
from laserlm.core.svd import SVDCache
from laserlm.evaluation.evaluate import Prepared
from laserlm.evaluation.metrics import choose_metrics, row_values
from laserlm.evaluation.protocols import REPRODUCE_RHOS
from laserlm.evaluation.scoring import Scorer
from laserlm.evaluation.stats import compare
from laserlm.evaluation.tasks import load_task
from laserlm.sweep.prescreen import prescreen, shortlist
from laserlm.sweep.store import ResultStore
from laserlm.sweep.sweeper import Sweeper, best_row, grid

BENCHMARKS = ("bb_wikidata", "bb_epistemic", "truthfulqa", "truthfulqa_mc1")


def test_score(model, layout, prepared, edits, metric, cache, base_rows=None):
    with edited(model, edits, layout=layout, svd_cache=cache):
        ev = prepared.score()
    rows = row_values(ev.records, metric)
    gain = compare(base_rows, rows) if base_rows is not None and edits else None
    return ev.metrics[metric], rows, gain


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--benchmarks", default=",".join(BENCHMARKS))
    ap.add_argument("--limit", type=int, default=500, help="val rows of the full grid (default 500)")
    ap.add_argument("--test-limit", type=int, default=500)
    ap.add_argument("--rows", type=int, default=100, help="val rows of the shortlist's gradient and scores")
    ap.add_argument("--matrices", type=int, default=4, help="matrices the shortlist keeps (default 4)")
    ap.add_argument("--full-from", help="a laser reproduce folder of the same model, val and test rows")
    ap.add_argument("--layers", help="the layers of every arm's grid, e.g. 26-29 (default all)")
    args = ap.parse_args()
    loaded = load_model(args.model)
    model, layout, cache = loaded.model, get_layout(loaded.model), SVDCache(disk=None)
    scorer = Scorer(model, loaded.tokenizer)
    layers = parse_layers(args.layers, "--layers") if args.layers else None
    layers = list(range(layout.n_layers)) if layers is None else list(layers)
    print("| benchmark | metric | base test | (a) full grid: test, edit, s | (b) gradient shortlist: test, edit, s | "
          "(c) clustered on the shortlist: test, edit, s |")
    print("|---|---|---|---|---|---|")
    for name in args.benchmarks.split(","):
        task = load_task(name)
        task.drop_long_answers(loaded.tokenizer)
        metric = task.primary
        metrics = choose_metrics(task.kind, task.metrics, True)
        test = Prepared(scorer, task.select("test", 0, args.test_limit), metrics, task.gen())
        small = Prepared(scorer, task.select("val", 0, args.rows), metrics, task.gen())
        base_test, base_rows, _ = test_score(model, layout, test, [], metric, cache)
        cells = []
        # (a)
        if args.full_from:
            folder = Path(args.full_from)
            best = json.loads((folder / name / "best.json").read_text())
            secs = json.loads((folder / "table1.json").read_text())["results"][name]["seconds"]
            full = [Edit.from_json(e) for e in best["best"]["edits"]]
        else:
            t0 = time.perf_counter()
            val = Prepared(scorer, task.select("val", 0, args.limit), metrics, task.gen())
            sweeper = Sweeper(model, layout, val, ResultStore(None), {"b": name}, "val", cache)
            sweeper.sweep(grid(["mlp_in", "mlp_out"], layers, list(REPRODUCE_RHOS), ["svd"]))
            best = best_row(list(sweeper.store.rows.values()), metric)
            full, secs = [Edit.from_json(best["edits"][0])], time.perf_counter() - t0
        cells.append((full, secs))
        # (b)
        t0 = time.perf_counter()
        every = grid(["mlp_in", "mlp_out"], layers, list(REPRODUCE_RHOS), ["svd"])
        ranked = prescreen("grad-matrix", layout, cache, every, small)
        picked = shortlist(ranked, "grad-matrix", args.matrices)
        sweeper = Sweeper(model, layout, small, ResultStore(None), {"b": name}, "val", cache)
        sweeper.sweep(picked)
        rows = [r for r in sweeper.store.rows.values()]
        best = best_row(rows, metric)
        cells.append(([Edit.from_json(best["edits"][0])], time.perf_counter() - t0))
        # (c): the same matrices, clustered methods added (the svd rows of (b) are reused)
        t1 = time.perf_counter()
        matrices = sorted({(c.type, c.layer) for c in picked})
        clustered = [Edit(m, t, layer, rho) for t, layer in matrices for m in ("cluster2", "cluster4", "cluster8")
                     for rho in REPRODUCE_RHOS]
        sweeper.sweep(clustered, base=False)
        best = best_row(list(sweeper.store.rows.values()), metric)
        cells.append(([Edit.from_json(best["edits"][0])], cells[-1][1] + time.perf_counter() - t1))
        out = []
        for edits, secs in cells:
            value, _, gain = test_score(model, layout, test, edits, metric, cache, base_rows)
            ci = f" [{100 * gain['ci'][0]:+.1f}, {100 * gain['ci'][1]:+.1f}]" if gain else ""
            out.append(f"{100 * value:.1f}{ci}, `{' '.join(map(str, edits)) or 'none'}`, {secs:.0f}")
        print(f"| {name} | {metric} | {100 * base_test:.1f} | " + " | ".join(out) + " |", flush=True)
    print(f"shortlist: the {args.matrices} matrices with the best gradient score on {args.rows} val rows; test on "
          f"{args.test_limit} rows; [..] the 95% paired bootstrap interval of the gain over the base model, in points")


if __name__ == "__main__":
    main()
