"""Time the SVDs of all MLP matrices of a model: cold (computed), warm (disk cache), hot (memory).

    python benchmarks/svd_cache.py [MODEL] [--types mlp_in,mlp_up,mlp_out]
"""

import argparse
import tempfile
import time

from laserlm import get_layout, load_model
from laserlm.core.svd import SVDCache


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="demo")
    ap.add_argument("--types", default="mlp_in,mlp_up,mlp_out")
    args = ap.parse_args()
    model = load_model(args.model).model
    targets = get_layout(model).targets(args.types.split(","))
    with tempfile.TemporaryDirectory() as disk:
        rows = []
        for label, cache in (("cold (computed)", SVDCache(disk=disk)), ("warm (disk cache)", SVDCache(disk=disk))):
            t0 = time.perf_counter()
            for t in targets:
                cache.get(t.weight)
            rows.append((label, time.perf_counter() - t0, cache.computed, cache.disk_hits))
            hot = cache
        t0 = time.perf_counter()
        for t in targets:
            hot.get(t.weight)
        rows.append(("hot (memory)", time.perf_counter() - t0, 0, 0))
    print(f"{len(targets)} matrices ({args.types}) of {args.model}")
    for label, secs, computed, hits in rows:
        print(f"  {label:18s} {secs:7.2f} s   computed={computed} disk_hits={hits}")
    print(f"  cold/warm ratio    {rows[0][1] / rows[1][1]:7.1f}x")


if __name__ == "__main__":
    main()
