"""Do the selection figures tell the truth? Simulated per-row 0/1 val tables with a known true gain per candidate.

    python benchmarks/selection.py [--runs 100] [--n 59,200,500] [--k 16,50,540] [--resamples 1000]

Each table is a LASER-like grid (layers x {mlp_in, mlp_out} x rho). Rows have a difficulty shared by every model;
a candidate agrees with the base on most rows (the milder its rho, the more), and candidates of one matrix
disagree on nested sets of rows with shared draws, so neighbours correlate as real candidates do. A candidate's
true gain is its expected accuracy gain over the row population (computed on 200,000 fresh rows). Scenarios:
- null: no candidate changes the expected accuracy;
- one: one true edit of +15 points at its peak, spread smoothly over neighbouring layers and stronger rhos;
- few: three peaks of +3, +8 and +12 points;
- harmful: every candidate 0.5 to 3 points worse.
For each rule it prints the mean bias of val_gain and of val_gain_corrected against the pick's true gain, the
coverage of the corrected interval (the out-of-bag gains' 2.5-97.5% percentiles, what best.json reports; beside
it, that of val_gain_corrected ± 1.96 times the pick's standard error, the narrower alternative), the rate of "edit" verdicts (under the null: the false-positive rate),
and the regret (true gain of the best candidate, the base included, minus the pick's), all in points.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from laserlm.evaluation.selection import RULES, Table, bootstrap_weights, corrected_gain, p_any, pick  # noqa: E402

Z = 1.959963984540054
GRIDS = {16: (8, 1), 50: (5, 5), 540: (30, 9)}  # K -> (layers, rhos); two types each
SCENARIOS = ("null", "one", "few", "harmful")


def grid(k: int):
    layers, rhos = GRIDS[k]
    return [(t, l, j) for l in range(layers) for t in range(2) for j in range(rhos)], layers, rhos


def deltas(scenario: str, cands, layers: int, rhos: int, gen: torch.Generator) -> torch.Tensor:
    """The planted accuracy shift of each candidate on the rows it disagrees with the base on (scaled below)."""
    out = torch.zeros(len(cands), dtype=torch.float64)
    strength = torch.tensor([(j + 1) / rhos for _, _, j in cands], dtype=torch.float64)  # stronger edit, more effect
    layer = torch.tensor([l for _, l, _ in cands], dtype=torch.float64)
    kind = torch.tensor([t for t, _, _ in cands])
    width = max(layers / 8, 0.75)
    if scenario in ("one", "few"):
        peaks = [(0.15, 0.75)] if scenario == "one" else [(0.03, 0.3), (0.08, 0.6), (0.12, 0.9)]
        for height, where in peaks:
            centre = torch.tensor(where * (layers - 1))
            t = int(torch.randint(2, (1,), generator=gen))
            out += (kind == t) * height * torch.exp(-(layer - centre) ** 2 / (2 * width ** 2)) * strength
    elif scenario == "harmful":
        out -= (0.005 + 0.025 * torch.rand(len(cands), generator=gen, dtype=torch.float64)) * strength.sqrt()
    return out


def disagreement(cands, rhos: int) -> torch.Tensor:
    return torch.tensor([0.03 + 0.3 * (j + 1) / rhos for _, _, j in cands], dtype=torch.float64)


def draw(n: int, cands, delta: torch.Tensor, gen: torch.Generator, layers: int, rhos: int):
    """(base 0/1 per row, K x n candidates' 0/1): candidate k redraws a row's outcome where it disagrees (the rows
    its matrix's shared uniform puts below its disagreement rate) with the base's probability shifted so that its
    expected gain is delta_k, clipped to [0, 1]."""
    p = torch.sigmoid(1.5 * torch.randn(n, generator=gen, dtype=torch.float64))
    base = (torch.rand(n, generator=gen, dtype=torch.float64) < p).double()
    matrices = 2 * layers
    u = torch.rand(matrices, n, generator=gen, dtype=torch.float64)  # where a matrix's candidates disagree
    v = torch.rand(matrices, n, generator=gen, dtype=torch.float64)  # and what they then draw
    m = torch.tensor([l * 2 + t for t, l, _ in cands])
    d = disagreement(cands, rhos)[:, None]
    q = (p[None] + delta[:, None] / d).clamp(0, 1)
    redraw = (v[m] < q).double()
    return base, torch.where(u[m] < d, redraw, base[None].expand(len(cands), n))


def truth(cands, delta: torch.Tensor, rhos: int, gen: torch.Generator, rows: int = 200_000) -> torch.Tensor:
    p = torch.sigmoid(1.5 * torch.randn(rows, generator=gen, dtype=torch.float64))
    d = disagreement(cands, rhos)[:, None]
    return (d[:, 0] * ((p[None] + delta[:, None] / d).clamp(0, 1) - p[None]).mean(1))


def run_setting(n: int, k: int, scenario: str, runs: int, resamples: int, seed: int) -> dict:
    cands, layers, rhos = grid(k)
    keys = [l for _, l, _ in cands]
    stats = {r: {"raw": [], "corr": [], "cover": [], "edit": [], "regret": []} for r in RULES}
    for run in range(runs):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + run)
        delta = deltas(scenario, cands, layers, rhos, gen)
        true = truth(cands, delta, rhos, gen)
        best_true = max(float(true.max()), 0.0)
        base, vals = draw(n, cands, delta, gen, layers, rhos)
        table = Table.build(base.tolist(), vals.tolist(), keys=keys)
        weights = bootstrap_weights(n, resamples, run)
        mean, se = table.moments()
        p = p_any(table, weights)
        for rule in RULES:
            chosen = int(pick(table, mean[None], se[None], rule)[0])
            t = float(true[chosen]) if chosen >= 0 else 0.0
            raw = float(mean[chosen]) if chosen >= 0 else 0.0
            if chosen >= 0:
                corr, (plo, phi) = corrected_gain(table, weights, rule)
                corr = min(corr, raw)  # as select() reports it
                lo, hi = corr - Z * float(se[chosen]), corr + Z * float(se[chosen])
            else:
                corr, lo, hi, plo, phi = 0.0, 0.0, 0.0, 0.0, 0.0
            s = stats[rule]
            s["raw"].append(raw - t)
            s["corr"].append(corr - t)
            s["cover"].append(lo - 1e-12 <= t <= hi + 1e-12)
            s.setdefault("cover2", []).append(plo - 1e-12 <= t <= phi + 1e-12)
            s["edit"].append(chosen >= 0 and p < 0.05)
            s["regret"].append(best_true - t)
    return {r: {key: sum(map(float, v)) / len(v) for key, v in s.items()} for r, s in stats.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--n", default="59,200,500")
    ap.add_argument("--k", default="16,50,540")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    print("| scenario | n | K | rule | bias val_gain | bias corrected | coverage: out-of-bag percentiles / ±1.96 se "
          "| edit verdicts | regret |")
    print("|---|---|---|---|---|---|---|---|---|")
    t0 = time.perf_counter()
    for scenario in args.scenarios.split(","):
        for n in map(int, args.n.split(",")):
            for k in map(int, args.k.split(",")):
                res = run_setting(n, k, scenario, args.runs, args.resamples, args.seed)
                for rule, s in res.items():
                    print(f"| {scenario} | {n} | {k} | {rule} | {100 * s['raw']:+.2f} | {100 * s['corr']:+.2f} | "
                          f"{100 * s['cover2']:.0f}% / {100 * s['cover']:.0f}% | {100 * s['edit']:.0f}% | {100 * s['regret']:.2f} |", flush=True)
    print(f"({args.runs} runs per setting, {args.resamples} resamples, {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
