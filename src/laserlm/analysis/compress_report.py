"""compress.md and compress.png of `laser compress`: base against the compressed model, and the metric against
the parameters kept along the greedy path."""

from __future__ import annotations

from pathlib import Path

from ..core.edits import Edit
from . import plots


def _plot(out: Path, summary: dict) -> None:
    plt = plots.pyplot()
    metric, base = summary["metric"], summary["base"]
    total = base["parameters"]
    kept = [(total - p["removed"]) / 1e6 for p in summary["path"]]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(kept, [p["metrics"][metric] for p in summary["path"]], marker="o", ms=3, label="greedy stack (val)")
    ax.axhline(base["val"][metric], ls="--", color="black", label="base model (val)")
    if summary["tolerance"]:
        ax.axhline(base["val"][metric] - summary["tolerance"], ls=":", color="grey", label="base - tolerance")
    ax.invert_xaxis()
    ax.set_xlabel("parameters kept (millions)")
    ax.set_ylabel(metric)
    ax.set_title(f"{summary['model']} on {summary['task']}: each step adds the reduction that removes the most "
                 f"parameters\nand keeps val {metric}", fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "compress.png", dpi=110)
    plt.close(fig)


def _test_change(c: dict) -> str:
    return f"{c['test_diff']:+.4f} [{c['test_ci'][0]:+.4f}, {c['test_ci'][1]:+.4f}]" if "test_ci" in c else "-"


def write_compress_report(out: Path, summary: dict) -> Path:
    metric, b, c = summary["metric"], summary["base"], summary["compressed"]
    stack = " ".join(f"`{Edit.from_json(e)}`" for e in summary["stack"]) or "(none: no reduction kept the metric)"
    ci = _test_change(c)
    p = f"{c['test_p_mcnemar']:.3g}" if "test_p_mcnemar" in c else "-"
    lines = [f"# laser compress: {summary['model']} on {summary['task']}", "",
             f"Kept: val `{metric}` >= base - {summary['tolerance']:g}. Searched: {', '.join(summary['methods'])} on "
             f"{', '.join(summary['types'])}, layers {summary['layers'][0]}-{summary['layers'][1]}, amounts "
             f"{', '.join(summary['amounts'])}; {summary['stacks_tried']} stacks tried.", "",
             f"Stack ({len(summary['stack'])} reductions): {stack}", "",
             "| | parameters | weights (MB) | val " + metric + " | test " + metric + " | tokens/s (forward, 8 x 128) |",
             "|---|---|---|---|---|---|",
             f"| base | {b['parameters']:,} | {b['weight_bytes'] / 1e6:.1f} | {b['val'][metric]:.4f} | "
             f"{b['test'][metric]:.4f} | {b['tokens_per_second']:.0f} |",
             f"| compressed | {c['parameters']:,} | {c['weight_bytes'] / 1e6:.1f} | {c['val'][metric]:.4f} | "
             f"{c['test'][metric]:.4f} | {c['tokens_per_second']:.0f} |", "",
             f"Parameters: {100 * (1 - c['parameters'] / b['parameters']):.1f}% fewer; the factorized folder's weight "
             f"files take {c['folder_bytes'] / 1e6:.1f} MB. Test change: {ci} (95% paired bootstrap interval), McNemar "
             f"p {p}. The reloaded folder scores val {metric} {c['val_reloaded'][metric]:.4f}.", "",
             "![metric against parameters kept](compress.png)", ""]
    if summary.get("selection"):
        from ..evaluation.selection import verdict_text

        lines += [f"The single reductions' search on val: {verdict_text(summary['selection'])}.", ""]
    _plot(out, summary)
    path = out / "compress.md"
    path.write_text("\n".join(lines))
    return path


def write_target_report(out: Path, summary: dict) -> Path:
    """compress.md of `laser compress --target`: the allocations tried on val, and base against the chosen one."""
    metric, b, c = summary["metric"], summary["base"], summary["compressed"]
    ci = _test_change(c)
    ppl = lambda r: "-" if r.get("heldout_perplexity") is None else f"{r['heldout_perplexity']:.2f}"  # noqa: E731
    lines = [f"# laser compress --target {summary['target']:g}: {summary['model']} on {summary['task']}", "",
             f"Matrices in reach: {', '.join(summary['types'])}, layers {summary['layers'][0]}-{summary['layers'][1]}. "
             f"The LASER edit tried in the allocations: {summary['laser'] or 'none (no single reduction beat the base on val)'}.",
             "", "| allocation | matrices reduced | parameters | mean calibration loss | val " + metric + " |",
             "|---|---|---|---|---|"]
    for cand in summary["candidates"]:
        mark = " (chosen)" if cand["name"] == summary["chosen"] else ""
        lines.append(f"| {cand['name']}{mark} | {len(cand['edits'])} | {cand['parameters']:,} | "
                     f"{cand['calibration_loss']:.4f} | {cand['val'][metric]:.4f} |")
    lines += ["", "| | parameters | weights (MB) | val " + metric + " | test " + metric + " | held-out perplexity | "
              "tokens/s (forward, 8 x 128) |", "|---|---|---|---|---|---|---|",
              f"| base | {b['parameters']:,} | {b['weight_bytes'] / 1e6:.1f} | {b['val'][metric]:.4f} | "
              f"{b['test'][metric]:.4f} | {ppl(b)} | {b['tokens_per_second']:.0f} |",
              f"| compressed | {c['parameters']:,} | {c['weight_bytes'] / 1e6:.1f} | {c['val'][metric]:.4f} | "
              f"{c['test'][metric]:.4f} | {ppl(c)} | {c['tokens_per_second']:.0f} |", "",
              f"Kept {c['parameters'] / b['parameters']:.3f} of the parameters (target {summary['target']:g}); the "
              f"folder's weight files take {c['folder_bytes'] / 1e6:.1f} MB. Test change {ci} (95% paired bootstrap "
              f"interval; test was not used to choose). The reloaded folder scores val {metric} "
              f"{c['val_reloaded'][metric]:.4f}. Held-out text: {summary['heldout']}.", ""]
    path = out / "compress.md"
    path.write_text("\n".join(lines))
    return path
