"""`laser reproduce` exhaustive against `--halving`: the four offline benchmarks, the authors' grid, in one run.

    python benchmarks/reproduce_speed.py [--model demo] [--limit 500] [-o runs/repro]

Runs `laser reproduce MODEL --benchmarks bb_wikidata,bb_epistemic,truthfulqa,truthfulqa_mc1 --limit N` into
OUT/full and again with `--halving` into OUT/halving (each resumable: a rerun times only what is missing), then
prints, per benchmark, the candidates, the sweep seconds of each, the speed-up, both picks, whether they agree,
and both test metrics.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from laserlm.cli.main import main as laser
from laserlm.core.edits import Edit

BENCHMARKS = "bb_wikidata,bb_epistemic,truthfulqa,truthfulqa_mc1"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--benchmarks", default=BENCHMARKS)
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--layers", help="override the authors' grid's layers (e.g. 26-29), for every benchmark")
    ap.add_argument("--only", choices=["full", "halving"], help="run one of the two (the other is read if present)")
    ap.add_argument("-o", "--output", default="runs/repro")
    args = ap.parse_args()
    out = Path(args.output)
    walls = {}
    for mode, extra in (("full", []), ("halving", ["--halving"])):
        if args.only and args.only != mode:
            continue
        t0 = time.perf_counter()
        layers = ["--layers", args.layers] if args.layers else []
        code = laser(["reproduce", args.model, "--benchmarks", args.benchmarks, "--limit", str(args.limit), *layers,
                      *extra, "-o", str(out / mode)])
        walls[mode] = time.perf_counter() - t0
        if code:
            raise SystemExit(code)
    tables = {m: json.loads((out / m / "table1.json").read_text())["results"] for m in ("full", "halving")
              if (out / m / "table1.json").exists()}
    if len(tables) < 2:
        return
    print("| benchmark | candidates | exhaustive s | halving s | speed-up | exhaustive pick | halving pick | agree | "
          "test: exhaustive | test: halving |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    totals = [0.0, 0.0]
    for name, full in tables["full"].items():
        half = tables["halving"][name]
        picks = [" ".join(str(Edit.from_json(e)) for e in r["best"]["edits"]) or "none" for r in (full, half)]
        rows = (out / "full" / name / "results.jsonl").read_text().splitlines()
        totals[0] += full["seconds"]
        totals[1] += half["seconds"]
        print(f"| {name} | {len(rows) - 1} | {full['seconds']:.0f} | {half['seconds']:.0f} | "
              f"{full['seconds'] / half['seconds']:.2f}x | `{picks[0]}` | `{picks[1]}` | {picks[0] == picks[1]} | "
              f"{full['best']['test']:.4f} | {half['best']['test']:.4f} |")
    print(f"| all | | {totals[0]:.0f} | {totals[1]:.0f} | {totals[0] / totals[1]:.2f}x | | | | | |")
    for mode, secs in walls.items():
        print(f"wall time of laser reproduce ({mode}), model load and test evaluations included: {secs:.0f} s")


if __name__ == "__main__":
    main()
