"""Held-out perplexity at uniform parameter cuts, for svd, asvd and whiten (and whiten with the loss allocation):
the table of docs/compress.md.

    python benchmarks/compress_table.py [--model demo] [--text FILE] [--cuts 0.1,0.2,0.3,0.4] [--types mlp,attn]

A cut of c removes c of the model's parameters (embeddings included) from the matrices of --types in every layer,
each matrix keeping the same fraction of its numbers (core.allocation.uniform; `loss` rows: core.allocation.by_loss).
Calibration is the shipped text (cached); perplexity is sliding-window on --text, which the package never saw.
It prints one row per cut and method, with the log-perplexity increase and its ratio to plain SVD's.
"""

import argparse
import math
import time
from importlib import resources

from laserlm import load_model
from laserlm.core.allocation import ALLOCATIONS, budget_for, curve_for
from laserlm.core.edits import Edit, edited
from laserlm.core.layout import get_layout
from laserlm.core.svd import default_cache
from laserlm.evaluation.calibration import calibrate
from laserlm.evaluation.evaluate import perplexity
from laserlm.evaluation.scoring import Scorer
from laserlm.sweep.compress import parameter_count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo")
    ap.add_argument("--text", default="/usr/share/common-licenses/GPL-3")
    ap.add_argument("--cuts", default="0.1,0.2,0.3,0.4")
    ap.add_argument("--types", default="mlp,attn")
    ap.add_argument("--methods", default="svd,asvd,whiten")
    a = ap.parse_args()
    try:
        text = open(a.text, encoding="utf-8").read()
    except OSError:
        text = (resources.files("laserlm") / "data" / "declaration_of_independence.txt").read_text(encoding="utf-8")
        a.text = "declaration_of_independence.txt (shipped)"
    loaded = load_model(a.model)
    layout, cache = get_layout(loaded.model), default_cache()
    types = layout.expand_type_list(a.types)
    reach = [(t, i) for i in range(layout.n_layers) for t in types if t in layout.per_layer[i]]
    t0 = time.perf_counter()
    calibrate(loaded.model, loaded.tokenizer, [Edit("whiten", t, i, "k=1") for t, i in reach],
              identity=loaded.identity)
    print(f"calibration: {time.perf_counter() - t0:.0f} s")
    scorer = Scorer(loaded.model, loaded.tokenizer)
    base = perplexity(scorer, text)
    total = parameter_count(loaded.model)
    print(f"text: {a.text}, {base['tokens']} tokens; base perplexity {base['perplexity']:.2f}; {total:,} parameters")
    print("| parameters removed | method | allocation | perplexity | log-perplexity increase | / plain SVD's |")
    print("|---|---|---|---|---|---|")
    rows = [(m, "uniform") for m in a.methods.split(",")] + [("whiten", "loss")]
    for cut in map(float, a.cuts.split(",")):
        svd_rise = None
        for method, alloc in rows:
            curves = [curve_for(layout.target(t, i), t, i, method, cache) for t, i in reach]
            ks = ALLOCATIONS[alloc](curves, budget_for(total, 1 - cut, curves))
            edits = [Edit(method, c.type, c.layer, f"k={k}") for c, k in zip(curves, ks) if c.params(k) < c.dense]
            with edited(loaded.model, edits, layout=layout, svd_cache=cache):
                ppl = perplexity(scorer, text)
            rise = ppl["nll"] - base["nll"]
            svd_rise = rise if method == "svd" and alloc == "uniform" else svd_rise
            ratio = f"{rise / svd_rise:.2f}" if svd_rise else "-"
            print(f"| {100 * cut:.0f}% | {method} | {alloc} | {ppl['perplexity']:,.2f} | {rise:+.2f} | {ratio} |",
                  flush=True)


if __name__ == "__main__":
    main()
