"""What the decoded tails of one generation candidate cost from recorded keys and values, against a prefill.

    python benchmarks/tail_speed.py [--model demo] [--limit 500] [--edit mlp_in:28:0.01] [--repeats 2]

Sweeps the edit once over val rows of bb_wikidata (paper protocol) to get its tails (the rows whose greedy generation
leaves the base model's draft), then decodes exactly those tails again and again, alternately from the keys and
values the sweep recorded and with generate()'s own prefill, under the edit, in one process. Prints seconds each
way and whether the ids agree.
"""

from __future__ import annotations

import argparse
import time

from laserlm import get_layout, load_model
from laserlm.core.edits import edited, resolve_edits
from laserlm.core.svd import SVDCache
from laserlm.evaluation import generation
from laserlm.evaluation.evaluate import Prepared
from laserlm.evaluation.metrics import choose_metrics
from laserlm.evaluation.scoring import Scorer
from laserlm.evaluation.tasks import load_task
from laserlm.sweep.store import ResultStore
from laserlm.sweep.sweeper import Sweeper


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--edit", default="mlp_in:28:0.01")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    loaded = load_model(args.model)
    task = load_task("bb_wikidata")
    model, layout, cache = loaded.model, get_layout(loaded.model), SVDCache(disk=None)
    scorer = Scorer(model, loaded.tokenizer)
    prepared = Prepared(scorer, task.select("val", 0, args.limit),
                        choose_metrics("cloze", ["gen01_paper", "top1"], False), task.gen())
    edit, = resolve_edits([args.edit], layout)
    seen, plain = {}, generation.generate_ids

    def keep(*a):
        seen["args"] = a
        return plain(*a)

    generation.generate_ids = keep
    Sweeper(model, layout, prepared, ResultStore(None), {"bench": "tails"}, "val", cache).sweep([edit])
    generation.generate_ids = plain
    sc, prefixes, budgets, least, past, _used = seen["args"]
    print(f"{args.model}, {args.edit}: {len(prefixes)} tails of {args.limit} rows, "
          f"{sum(len(p) for p in prefixes) / len(prefixes):.1f} tokens of prefix on average")
    times: dict[str, list[float]] = {"recorded keys": [], "prefill": []}
    ids = {}
    with edited(model, [edit], layout=layout, svd_cache=cache):
        for _ in range(args.repeats):
            for label, given in (("recorded keys", past), ("prefill", None)):
                t0 = time.perf_counter()
                ids[label] = plain(sc, prefixes, budgets, least, given)
                times[label].append(time.perf_counter() - t0)
    for label, secs in times.items():
        print(f"{label}: " + ", ".join(f"{s:.2f} s" for s in secs))
    print(f"SUMMARY tail_speed: prefill / recorded keys {min(times['prefill']) / min(times['recorded keys']):.2f}x, "
          f"ids {'equal' if ids['recorded keys'] == ids['prefill'] else 'DIFFER'}")


if __name__ == "__main__":
    main()
