"""Does a run's pick hold on val rows it was not chosen on? A split-half check from a run folder's stored per-row
val values (no model runs):

    python benchmarks/split_half.py RUN_DIR [RUN_DIR ...] [--halves 500] [--rules best,lcb,shrink]

For each of many random halves of val (groups kept whole), each rule picks on one half and its pick is scored on
the other. Printed per run and rule: the mean gain on the choosing half (what a search reports: the best of K),
the mean gain on the other half (what the choice delivers), the share of halves whose pick gains on the other
half, and how often the pick is the run's own; beside them the run's selection figures and its test gain.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from laserlm.core.edits import Edit  # noqa: E402
from laserlm.evaluation.metrics import lower_is_better  # noqa: E402
from laserlm.evaluation.selection import Table, pick  # noqa: E402
from laserlm.sweep.pick import _values  # noqa: E402
from laserlm.sweep.store import ResultStore  # noqa: E402


def split_half(run: Path, rules: list[str], halves: int, seed: int) -> list[str]:
    best = json.loads((run / "best.json").read_text())
    metric = best["metric"]
    rows = list(ResultStore(run / "results.jsonl", read_only=True).rows.values())
    base = next(r for r in rows if not r["edits"])
    family = [r for r in rows if len(r["edits"]) == 1 and _values(r, metric) is not None]
    if _values(base, metric) is None or not family:
        return [f"{run}: no per-row val values (a run folder from an older laserlm): rerun its search"]
    table = Table.build(_values(base, metric), [_values(r, metric) for r in family],
                        lower=lower_is_better(metric, best.get("lower_is_better")), groups=base.get("groups"),
                        keys=[r["edits"][0]["layer"] for r in family])
    n_groups = table.sums.shape[1]
    g = torch.Generator().manual_seed(seed)
    masks = torch.stack([torch.randperm(n_groups, generator=g) < n_groups // 2 for _ in range(halves)]).double()
    scale = 1 if lower_is_better(metric, best.get("lower_is_better")) else 100
    sel = best.get("selection") or {}
    test = best["best"].get("test_diff")
    edits = " ".join(str(Edit.from_json(e)) for e in best["best"]["edits"]) or "(base)"
    lines = [f"{run} ({metric}, K = {table.k}, {n_groups} val groups): pick {edits}, rule {sel.get('rule')}, "
             f"p_any {sel.get('p_any')}, verdict {sel.get('verdict')}, val gain {scale * sel.get('val_gain', 0):+.2f}, "
             f"corrected {scale * (sel.get('val_gain_corrected') or 0):+.2f}, test gain "
             f"{'-' if test is None else f'{scale * (test if scale == 100 else -test):+.2f}'}",
             "", "| rule | gain on the choosing half | gain on the other half | other half > 0 | picks the run's |",
             "|---|---|---|---|---|"]
    own = next((i for i, r in enumerate(family) if r["edits"] == best["best"]["edits"]), -1)
    for rule in rules:
        chose = table.moments(masks)
        chosen = pick(table, chose[0], chose[1], rule)
        other = table.moments(1 - masks)[0]
        idx = chosen.clamp_min(0)[:, None]
        a = torch.where(chosen >= 0, chose[0].gather(1, idx)[:, 0], torch.zeros(halves, dtype=torch.float64))
        b = torch.where(chosen >= 0, other.gather(1, idx)[:, 0], torch.zeros(halves, dtype=torch.float64))
        lines.append(f"| {rule} | {scale * float(a.mean()):+.2f} | {scale * float(b.mean()):+.2f} | "
                     f"{100 * float((b > 0).double().mean()):.0f}% | {100 * float((chosen == own).double().mean()):.0f}% |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--halves", type=int, default=500)
    ap.add_argument("--rules", default="best,lcb,shrink")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for run in args.runs:
        print("\n".join(split_half(run, args.rules.split(","), args.halves, args.seed)) + "\n")


if __name__ == "__main__":
    main()
