"""report.md and the paper's Figure-2-style plots, regenerated from a run folder's files alone."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.edits import Edit
from ..evaluation.metrics import lower_is_better, rank_key
from ..sweep.halving import HALVING_STORE
from ..sweep.prescreen import PRESCREEN_FILE
from ..sweep.store import MANIFEST, ResultStore


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def _amount_label(e: dict) -> str:
    a = e["amount"]
    label = "" if a is None else (a if isinstance(a, str) else f"ρ={a:g}")
    return label if e["method"] == "svd" else f"{e['method']} {label}".strip()


def stopped_early(run_dir: Path, full: list[dict]) -> list[tuple[dict, dict]]:
    """Candidates --halving stopped before all of val: (its last partial row, the base's row on the same rows),
    for every single edit that results.jsonl lacks."""
    path = Path(run_dir) / HALVING_STORE
    if not path.exists():
        return []
    done = {json.dumps(r["edits"], sort_keys=True) for r in full}
    last: dict[str, dict] = {}
    bases: dict[int, dict] = {}
    for r in ResultStore(path, read_only=True).rows.values():
        if not r["edits"]:
            bases[r["n"]] = r
        elif len(r["edits"]) == 1 and (key := json.dumps(r["edits"], sort_keys=True)) not in done:
            if key not in last or r["n"] > last[key]["n"]:
                last[key] = r
    return [(r, bases[r["n"]]) for r in last.values() if r["n"] in bases]


def plot(rows: list[dict], base: dict | None, metric: str, path: Path, title: str, layers: list[int] | None = None,
         early: list[tuple[dict, dict]] = ()) -> None:
    """Metric against layer: one panel per type, one line per amount, the base model dashed. A line breaks at a
    layer of the grid it was not evaluated at (a prescreen's budget, halving); a candidate halving stopped early
    is a hollow marker at its gain on the rows it had, drawn against the full-val base line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    singles = [r for r in rows if len(r["edits"]) == 1 and metric in r["metrics"]]
    types = sorted({r["edits"][0]["type"] for r in singles} | {r["edits"][0]["type"] for r, _ in early})
    if not types:
        return
    fig, axes = plt.subplots(1, len(types), figsize=(5 * len(types), 3.8), squeeze=False, sharey=True)
    for ax, t in zip(axes[0], types):
        lines: dict[str, dict[int, float]] = {}
        for r in singles:
            e = r["edits"][0]
            if e["type"] == t:
                lines.setdefault(_amount_label(e), {})[e["layer"]] = r["metrics"][metric]
        grid = sorted(set(layers or []) | {x for pts in lines.values() for x in pts})
        colours = {}
        for label, pts in sorted(lines.items()):
            line, = ax.plot(grid, [pts.get(x, float("nan")) for x in grid], marker="o", ms=3, label=label)
            colours[label] = line.get_color()
        shown = False
        for r, b in early:
            e = r["edits"][0]
            if e["type"] != t or metric not in r["metrics"] or base is None or metric not in b["metrics"]:
                continue
            value = base["metrics"][metric] + r["metrics"][metric] - b["metrics"][metric]
            ax.plot([e["layer"]], [value], marker="o", ms=4, mfc="none", ls="none",
                    color=colours.get(_amount_label(e), "grey"),
                    label=None if shown else "stopped early (halving): its gain on the rows it had")
            shown = True
        if base is not None and metric in base["metrics"]:
            ax.axhline(base["metrics"][metric], ls="--", color="black", label="base")
        ax.set_title(t)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(run_dir: str | Path) -> Path:
    """Rewrite report.md and the PNG plots from results.jsonl (and best.json, run.json if present)."""
    run_dir = Path(run_dir)
    rows = list(ResultStore(run_dir / "results.jsonl", read_only=True).rows.values())
    manifest = json.loads((run_dir / MANIFEST).read_text()) if (run_dir / MANIFEST).exists() else {}
    best = json.loads((run_dir / "best.json").read_text()) if (run_dir / "best.json").exists() else None
    metric = (best or {}).get("metric") or manifest.get("metric") or "top1"
    lower = lower_is_better(metric, (best or {}).get("lower_is_better", manifest.get("lower_is_better")))
    base = next((r for r in rows if not r["edits"]), None)
    singles = sorted((r for r in rows if len(r["edits"]) == 1),
                     key=lambda r: rank_key(r["metrics"], metric, lower), reverse=True)
    # A second column: the paper's loss for text tasks, else the objective's next metric.
    names = list(dict.fromkeys(m for r in rows for m in r["metrics"] if m != metric))
    second = "logloss" if "logloss" in names else (names[0] if names else None)
    cols = [m for m in (metric, second) if m]
    task = manifest.get("task", "?")
    if isinstance(task, dict) and "objective" in task:
        task = f"objective {task['objective']} (version {task['version']})"
    model = (manifest.get("model") or {}).get("model", "?")
    lines = [f"# LASER search: {model} on {task}", ""]
    lines += [f"Primary metric: `{metric}`{' (minimised)' if lower else ''}, ties broken by the other "
              "metrics. "
              + (f"Val rows: {manifest['val_rows']['n']}, test rows: {manifest['test_rows']['n']}, split seed "
                 f"{manifest.get('split_seed', '?')}." if (manifest.get("val_rows") or {}).get("n") is not None
                 else "Val and test as the objective defines them."), ""]
    if best:
        lines += ["| | edits | val | test | test - base [95% CI] | McNemar p |", "|---|---|---|---|---|---|"]
        for name in ("base", "best", "mp", "composed"):
            if name in best:
                b = best[name]
                edits = ", ".join(f"`{Edit.from_json(e)}`" for e in b.get("edits", [])) or "(none)"
                ci = (f"{b['test_diff']:+.4f} [{b['test_ci'][0]:+.4f}, {b['test_ci'][1]:+.4f}]" if "test_ci" in b
                      else "-")
                p = f"{b['test_p_mcnemar']:.3g}" if "test_p_mcnemar" in b else "-"
                lines.append(f"| {name} | {edits} | {_fmt(b['val'])} | {_fmt(b['test'])} | {ci} | {p} |")
        lines += ["", "The interval is a paired bootstrap over test rows (10,000 resamples, seed 0); McNemar's exact "
                  "test counts the rows only one of the two models gets right (0-1 metrics). The selection of the best "
                  "of many candidates on val does not bias them: test rows took no part in it.", ""]
        lines += _selection_section(best)
    lines += ["## Top 10 candidates (val)", "", f"| edit | {' | '.join(cols)} | n |", "|---" * (len(cols) + 2) + "|"]
    for r in singles[:10] + ([base] if base else []):
        label = f"`{Edit.from_json(r['edits'][0])}`" if r["edits"] else "base"
        lines.append(f"| {label} | {' | '.join(_fmt(r['metrics'].get(m)) for m in cols)} | {r['n']} |")
    lines += _methods_section(singles, cols, metric, lower)
    lines += _halving_section(run_dir, metric, lower) + _prescreen_section(run_dir, rows)
    lines += ["", "## Grid", ""]
    for key in ("types", "layers", "amounts", "methods"):
        if key in manifest:
            lines.append(f"- {key}: {', '.join(manifest[key])}")
    lines.append(f"- candidates evaluated: {len(singles)}")
    lines += ["", "## Plots", ""]
    early = stopped_early(run_dir, singles)
    for m in cols:
        name = f"plot_{m}.png"
        plot(rows, base, m, run_dir / name, f"{model} on {task}: val {m} against layer",
             layers=[int(x) for x in manifest.get("layers", [])], early=early)
        if (run_dir / name).exists():
            lines.append(f"![{m}]({name})")
    lines += _analysis_sections(run_dir)
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _selection_section(best: dict) -> list[str]:
    """The verdict on val: does any edit beat the base beyond what choosing among K candidates gives?"""
    from ..evaluation.selection import verdict_text

    lines = []
    for name in ("best", "composed"):
        sel = best.get("selection") if name == "best" else best.get("composed", {}).get("selection")
        if not sel:
            continue
        ci = sel.get("val_gain_corrected_ci")
        lines += [f"Selection of `{name}` (rule `{sel['rule']}`, alpha {sel['alpha']:g}): {verdict_text(sel)}"
                  + (f", 95% interval [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "") + "."
                  + (f" {sel['note']}." if sel.get("note") and sel.get("p_any") is not None else ""), ""]
    if lines:
        lines += ["The val gain of a pick is the best of K noisy estimates and so optimistic; the corrected gain "
                  "scores the rule's picks on val rows they were not chosen on (bootstrap bias-corrected "
                  "selection), and p is a family-wise bootstrap max-t over all K (docs/search.md).", ""]
    return lines


def _methods_section(singles: list[dict], cols: list[str], metric: str, lower: bool) -> list[str]:
    """With several methods swept (svd, cluster4, prune, ...): each one's best candidate on val."""
    by_method: dict[str, list[dict]] = {}
    for r in singles:
        by_method.setdefault(r["edits"][0]["method"], []).append(r)
    if len(by_method) < 2:
        return []
    lines = ["", "## Methods (best candidate of each, val)", "",
             f"| method | candidates | best | {' | '.join(cols)} |", "|---|---|---|" + "---|" * len(cols)]
    for method, rows in sorted(by_method.items(), key=lambda kv: rank_key(kv[1][0]["metrics"], metric, lower),
                               reverse=True):
        best = rows[0]  # singles come best first
        lines.append(f"| {method} | {len(rows)} | `{Edit.from_json(best['edits'][0])}` | "
                     f"{' | '.join(_fmt(best['metrics'].get(m)) for m in cols)} |")
    return lines


def _halving_section(run_dir: Path, metric: str, lower: bool) -> list[str]:
    """The rounds of --halving from halving.jsonl: rows, candidates scored, the best there."""
    path = run_dir / HALVING_STORE
    if not path.exists():
        return []
    rounds: dict[int, list[dict]] = {}
    for r in ResultStore(path, read_only=True).rows.values():
        if r["edits"]:
            rounds.setdefault(r["n"], []).append(r)
    lines = ["", "## Successive halving (partial val scores, halving.jsonl)", "",
             "Candidates weak on a round's rows were not scored further: the risk of --halving.", "",
             f"| val rows | candidates | best there | its {metric} |", "|---|---|---|---|"]
    for n in sorted(rounds):
        best = max(rounds[n], key=lambda r: rank_key(r["metrics"], metric, lower))
        lines.append(f"| {n} | {len(rounds[n])} | `{Edit.from_json(best['edits'][0])}` | "
                     f"{_fmt(best['metrics'].get(metric))} |")
    return lines


def _prescreen_section(run_dir: Path, rows: list[dict]) -> list[str]:
    """What --prescreen ranked and which of its candidates --budget let through."""
    path = run_dir / PRESCREEN_FILE
    if not path.exists():
        return []
    saved = json.loads(path.read_text())
    evaluated = {str(Edit.from_json(r["edits"][0])) for r in rows if len(r["edits"]) == 1}
    order = [(str(Edit.from_json(r["edit"])), r["score"]) for r in saved["order"]]
    lines = ["", f"## Prescreen: {saved['kind']}", "",
             f"{len(evaluated)} of {len(order)} candidates evaluated"
             + (f" (--budget {saved['budget']}, the best ranked)" if saved.get("budget") else "")
             + "; the others were never scored, and the best edit may be among them: the risk of --budget.", "",
             "| rank | edit | prescreen score | evaluated |", "|---|---|---|---|"]
    for i, (edit, score) in enumerate(order[:15], 1):
        lines.append(f"| {i} | `{edit}` | {'-' if score is None else f'{score:.4g}'} | "
                     f"{'yes' if edit in evaluated else 'no'} |")
    return lines


def _analysis_sections(run_dir: Path) -> list[str]:
    """A section per `laser analyze ... -o RUN_DIR` table found in the folder."""
    lines = []
    for path in sorted(run_dir.glob("analysis_*.json")):
        name = path.stem.removeprefix("analysis_")
        t = json.loads(path.read_text())
        lines += ["", f"## Analysis: {name}", ""]
        if name == "flips":
            c = t["counts"]
            lines.append(f"{t['split']}, n={t['n']}: both right {c['both_right']}, corrected {c['corrected']}, "
                         f"newly wrong {c['newly_wrong']}, both wrong {c['both_wrong']}. Generic words among the "
                         f"base model's predictions on corrected rows: "
                         f"{100 * t['generic_share_of_base_predictions_on_corrected']:.1f}%.")
        elif name == "perplexity":
            lines.append(f"Perplexity {t['before']:.3f} -> {t['after']:.3f} ({100 * t['change']:+.2f}%) over "
                         f"{t['tokens']} tokens of {t['text']}.")
        elif name == "spectrum":
            lines += ["| type | layer | shape | effective rank |", "|---|---|---|---|"]
            lines += [f"| {r['type']} | {r['layer']} | {'x'.join(map(str, r['shape']))} | {r['effective_rank']:.1f} |"
                      for r in t]
        elif name == "curve":
            lines.append(f"{t['type']}:{t['layer']}: {json.dumps(t['landmarks'])}")
            lines.append(f"![curve](curve_{t['type']}_{t['layer']}.png)")
        elif name == "components":
            lines += ["| prompt | answer | top | bottom |", "|---|---|---|---|"]
            lines += [f"| {r['prompt'][:60]} | {r['answer']} | {r['top']!r} | {r['bottom']!r} |" for r in t["corrected"][:20]]
            if t.get("similarity"):
                lines += ["", "| rho kept | cosine: top only | cosine: removed only |", "|---|---|---|"]
                lines += [f"| {r['rho']:g} | {r['top']:.3f} | {r['bottom']:.3f} |" for r in t["similarity"]]
        elif name == "seeds":
            s = t["spread"][t["metric"]]
            lines.append(f"{t['split']} (n={t['n']}), {t['metric']}: exact SVD {t['exact'][t['metric']]:.4f}; the "
                         f"authors' svd_lowrank over {len(t['seeds'])} seeds: mean {s['mean']:.4f}, sd {s['sd']:.4f}, "
                         f"range [{s['min']:.4f}, {s['max']:.4f}]; base {t['base'][t['metric']]:.4f}.")
        for png in ("flips", "perplexity", "effective_rank", "components", "components_similarity", "seeds"):
            if name in png and (run_dir / f"{png}.png").exists():
                lines.append(f"![{png}]({png}.png)")
    return lines
