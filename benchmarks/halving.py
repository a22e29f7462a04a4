"""Successive halving and gradient prescreening against the plain search, in one run on the same model,
rows and grid.

    python benchmarks/halving.py                                  # demo, bb_wikidata, layers 20-29, 200 val rows
    python benchmarks/halving.py --layers all --limit 500 --budget 60   # the paper's grid on 500 rows (long on CPU)

Runs `laser search` three ways: plain, `--halving ETA`, and `--prescreen grad --budget N`. Prints each one's wall time, its selected edit, and its val and test value of the selection metric, then
the speed-up and the gap. Each search writes its own run folder under --out (delete it to time again: a
rerun resumes and is instant).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

from laserlm.cli.main import main


def run(argv: list[str]) -> float:
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    if code != 0:
        sys.exit(f"laser {' '.join(argv)} exited {code}")
    return time.perf_counter() - t0


def main_() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--task", default="bb_wikidata")
    p.add_argument("--metric", default="top1")
    p.add_argument("--layers", default="20-29")
    p.add_argument("--limit", type=int, default=200, help="val rows (default 200)")
    p.add_argument("--test-limit", type=int, default=600)
    p.add_argument("--eta", type=int, default=3)
    p.add_argument("--budget", type=int, default=20, help="candidates evaluated after --prescreen grad (default 20)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/bench-halving")
    args = p.parse_args()
    common = ["search", args.model, "-t", args.task, "--metric", args.metric, "--layers", args.layers,
              "--limit", str(args.limit), "--test-limit", str(args.test_limit), "--device", args.device]
    out = Path(args.out)
    secs = {"plain": run(common + ["-o", str(out / "plain")]),
            "halving": run(common + ["--halving", str(args.eta), "-o", str(out / "halving")]),
            "grad": run(common + ["--prescreen", "grad", "--budget", str(args.budget), "-o", str(out / "grad")])}
    best = {k: json.loads((out / k / "best.json").read_text()) for k in secs}
    print(f"{args.model} on {args.task}, layers {args.layers}, {args.limit} val rows, {args.test_limit} test rows, "
          f"selection on {args.metric}")
    for k in secs:
        b = best[k]["best"]
        edit = " ".join(f"{e['type']}:{e['layer']}:{e['amount']}" for e in b["edits"])
        print(f"{k:8s} {secs[k]:7.1f} s  best {edit:22s} val {b['val']:.4f}  test {b['test']:.4f}")
    print(f"base     val {best['plain']['base']['val']:.4f}  test {best['plain']['base']['test']:.4f}")
    for k in ("halving", "grad"):
        same = best["plain"]["best"]["edits"] == best[k]["best"]["edits"]
        print(f"{k}: speed-up {secs['plain'] / secs[k]:.2f}x; "
              + ("the same edit" if same else
                 f"another edit: val gap {best['plain']['best']['val'] - best[k]['best']['val']:+.4f}, "
                 f"test gap {best['plain']['best']['test'] - best[k]['best']['test']:+.4f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main_())
