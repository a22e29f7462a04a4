"""table1.md of `laser reproduce`: ours beside the paper's figures, and figure7.png.

The paper's figures (Tables 1 and 4 for accuracy and loss, Tables 5 and 6 for the chosen edit, and the RoBERTa
rows only the talk slides give) are package data, data/paper/tables.json. For RoBERTa-base, GPT-J-6B and
Llama-2-7B (hub ids, and folders named like them) every benchmark of the paper gets a row: its figures, ours, the
differences. For any other model, each row carries the paper's LASER gain on its three models, so a reader sees
whether our gain is of the paper's size. Our gain carries its 95% paired bootstrap interval over test rows and,
for 0-1 metrics, McNemar's exact p.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

from ..core.edits import Edit
from ..sweep.store import ResultStore

PAPER_ORDER = ("counterfact", "hotpotqa", "fever", "bios_gender", "bios_profession", "truthfulqa", "bb_epistemic",
               "bb_wikidata")
NAMES = {"roberta": "RoBERTa", "gptj": "GPT-J", "llama2": "Llama-2"}
ALIASES = {"roberta-base": "roberta", "facebookai/roberta-base": "roberta", "gpt-j-6b": "gptj", "gpt-j": "gptj",
           "gptj": "gptj", "eleutherai/gpt-j-6b": "gptj", "llama-2-7b-hf": "llama2", "llama-2-7b": "llama2",
           "llama2-7b": "llama2", "meta-llama/llama-2-7b-hf": "llama2"}


@lru_cache(maxsize=1)
def tables() -> dict:
    return json.loads((resources.files("laserlm") / "data" / "paper" / "tables.json").read_text(encoding="utf-8"))


def paper_key(model: str) -> str | None:
    """'roberta', 'gptj' or 'llama2' for a hub id or a folder named like one of the paper's models, else None."""
    name = model.rstrip("/").lower()
    return ALIASES.get(name) or ALIASES.get(Path(name).name)


def paper_rows(key: str) -> dict[str, dict]:
    """benchmark -> {"base": [acc, loss], "laser": [acc, loss], "edit": [tau, layer, rho] | None, "notes": [...]}"""
    t = tables()
    out: dict[str, dict] = {}
    for table in ("table1", "table4"):
        for bench, row in t[table]["rows"].get(key, {}).items():
            out[bench] = {"base": row["base"], "laser": row["laser"], "notes": []}
    if key == "roberta":
        for bench, row in t["slides"]["roberta_extra"].items():
            out[bench] = {"base": row["base"], "laser": row["laser"], "edit": row["edit"],
                          "notes": ["the talk slides (the paper has no RoBERTa row here)"]}
    for bench, edit in t["table5_table6_selected_edit"].get(key, {}).items():
        out.setdefault(bench, {"notes": []})["edit"] = edit
    differs = t["slides"]["differs_from_paper"]
    if key == "roberta":
        s = differs["roberta hotpotqa"]["slides"]
        out["hotpotqa"]["notes"].append(f"the slides give base {_pair(s['base'])}, LASER {_pair(s['laser'])}, edit "
                                        f"{_edit(s['edit'])}")
    if key in ("gptj", "llama2"):
        base, laser = differs["bb_epistemic losses"]["slides"][key]
        out["bb_epistemic"]["notes"].append(f"the slides give losses {base:g} (base) and {laser:g} (LASER)")
    if key == "gptj":
        out["bb_epistemic"]["notes"].append(f"the paper names no side of the MLP; the slides say "
                                            f"{_edit(differs['gptj bb_epistemic edit']['slides'])}")
    return out


def _pair(p) -> str:
    return f"{p[0]:g} / {p[1]:g}"


def _edit(e) -> str:
    return "-" if not e else f"({'U' if e[0] == 'mlp' else e[0]}, {e[1]}, {e[2]:g})"


def _ours_edit(r: dict) -> str:
    edits = r["best"]["edits"]
    if not edits:
        return "(none better than base)"
    return " ".join(_edit([e["type"], e["layer"], e["amount"]]) if isinstance(e["amount"], float)
                    else f"`{Edit.from_json(e)}`" for e in edits)


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _loss(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def gain_text(best: dict) -> str:
    """'+3.4 [+1.2, +5.6], p 0.004' in points, from best.json's paired comparison."""
    if best.get("test") is None:
        return "-"
    if "test_ci" not in best:
        return "+0.0" if not best["edits"] else "-"
    lo, hi = best["test_ci"]
    p = f", p {best['test_p_mcnemar']:.2g}" if "test_p_mcnemar" in best else ""
    return f"{100 * best['test_diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]{p}"


def table1(model: str, results: dict[str, dict], skipped: dict[str, str], seconds: float,
           layout_notes: list[str] | None = None) -> str:
    """Markdown for `results` (benchmark -> reproduce's result: best.json plus "n_val", "n_test", "grid");
    `layout_notes` are what the structure found (laser info), said where they change a comparison."""
    key = paper_key(model)
    paper = paper_rows(key) if key else {}
    names = list(PAPER_ORDER) if key else []
    names += [n for n in list(results) + list(skipped) if n not in names]
    lines = [f"# LASER on {model}: the paper's Table 1 protocol", "",
             "Each benchmark: a search over `mlp_in`, `mlp_out` (grid below), selected on val, reported on test, under "
             "`--protocol paper`. Accuracy is the protocol's primary metric, in %; the gain is LASER minus base on test "
             "with its 95% paired bootstrap interval over test rows and McNemar's exact p (0-1 metrics); loss is the "
             "mean per-token NLL of the gold answer over the whole vocabulary.", ""]
    if "fused gate+up" in (layout_notes or []):
        lines += ["This model's `mlp_in` is its fused gate+up matrix, reduced whole (docs/your-model.md), where the "
                  "paper's models' `mlp_in` is a single input map (GPT-J's and RoBERTa's only one, Llama-2's gate): "
                  "read its `mlp_in` rows against the paper's with that in mind.", ""]
    notes: list[str] = []
    if key:
        lines += [f"The paper's figures are {NAMES[key]}'s (Tables 1 and 4; edits from Tables 5 and 6).", "",
                  "| benchmark | metric | n val / test | paper base | paper LASER | paper gain | ours base | ours LASER "
                  "| our gain [95% CI], p | base - paper | LASER - paper |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    else:
        lines += ["Not one of the paper's models: each row shows the paper's LASER gain (points) on its three models "
                  "beside ours.", "",
                  "| benchmark | metric | n val / test | base | LASER | our gain [95% CI], p | paper gain: "
                  + " | ".join(NAMES.values()) + " |", "|---|---|---|---|---|---|" + "---|" * len(NAMES)]
    for name in names:
        r, p = results.get(name), paper.get(name, {})
        mark = ""
        if p.get("notes"):
            first = len(notes) + 1
            notes += [f"{first + i}. {name}: {n}." for i, n in enumerate(p["notes"])]
            mark = "".join(f"<sup>{first + i}</sup>" for i in range(len(p["notes"])))
        ours = (r["metric"], f"{r['n_val']} / {r['n_test']}", _pct(r["base"]["test"]), _pct(r["best"]["test"]),
                gain_text(r["best"])) if r else ("-", skipped.get(name, "not run")[:60], "-", "-", "-")
        if key:
            pb, pl = (p["base"][0], p["laser"][0]) if "base" in p else (None, None)
            diff = [("-" if pv is None or v is None else f"{100 * v - pv:+.1f}")
                    for pv, v in ((pb, r and r["base"]["test"]), (pl, r and r["best"]["test"]))]
            lines.append(f"| {name}{mark} | {ours[0]} | {ours[1]} | {_num(pb)} | {_num(pl)} | "
                         f"{'-' if pb is None else f'{pl - pb:+.1f}'} | {ours[2]} | {ours[3]} | {ours[4]} | "
                         f"{diff[0]} | {diff[1]} |")
        else:
            gains = [_paper_gain(k, name) for k in NAMES]
            lines.append(f"| {name} | {ours[0]} | {ours[1]} | {ours[2]} | {ours[3]} | {ours[4]} | {' | '.join(gains)} |")
    lines += ["", "| benchmark | " + ("paper base loss | paper LASER loss | " if key else "")
              + "ours base loss | ours LASER loss | " + ("paper (tau, l, rho) | " if key else "")
              + "ours (tau, l, rho) | grid |", "|---|" + "---|" * (6 if key else 4)]
    for name in names:
        r, p = results.get(name), paper.get(name, {})
        row = [name]
        if key:
            row += [_num(p["base"][1]) if "base" in p else "-", _num(p["laser"][1]) if "base" in p else "-"]
        row += [_loss(r["base"]["test_metrics"].get("logloss")) if r else "-",
                _loss(r["best"]["test_metrics"].get("logloss")) if r else "-"]
        if key:
            row.append(_edit(p.get("edit")))
        row += [_ours_edit(r) if r else "-", r.get("grid", "-") if r else "-"]
        lines.append("| " + " | ".join(row) + " |")
    if notes:
        lines += ["", "Notes:", *notes]
    lines += selection_lines(results)
    lines += ["", "![Figure 7: val gain of the best rho per benchmark and layer](figure7.png)", "",
              f"Total time: {seconds:.0f} s."]
    return "\n".join(lines) + "\n"


def selection_lines(results: dict[str, dict]) -> list[str]:
    """What choosing among K candidates on val is worth, per benchmark: the family-wise p-value that some
    candidate beats the base and the val gain, raw (the best of K, optimistic) and corrected for the choice."""
    from ..evaluation.selection import verdict_text

    rows = [(name, r["selection"]) for name, r in results.items() if r.get("selection")]
    if not rows:
        return []
    return ["", "Selection on val (the paper picks the argmax; these say what that pick is worth before test):", "",
            *[f"- {name}: {verdict_text(sel)}." for name, sel in rows]]


def _num(v) -> str:
    return "-" if v is None else f"{v:g}"


def _paper_gain(key: str, bench: str) -> str:
    row = paper_rows(key).get(bench)
    return "-" if not row or "base" not in row else f"{row['laser'][0] - row['base'][0]:+.1f}"


def figure7_grid(out_dir: Path, results: dict[str, dict]) -> dict[str, dict[tuple[str, int], float]]:
    """benchmark -> {(type, layer): val gain of its best single edit over the base}: points (x100) for a rate, the
    decrease for a loss, from each benchmark's results.jsonl."""
    from ..evaluation.metrics import lower_is_better

    grids = {}
    for name, r in results.items():
        rows = list(ResultStore(Path(out_dir) / name / "results.jsonl", read_only=True).rows.values())
        base = next((x["metrics"][r["metric"]] for x in rows if not x["edits"]), None)
        sign = -1 if lower_is_better(r["metric"]) else 100
        best: dict[tuple[str, int], float] = {}
        for x in rows:
            if len(x["edits"]) == 1 and base is not None:
                e = x["edits"][0]
                gain = sign * (x["metrics"][r["metric"]] - base)
                best[(e["type"], e["layer"])] = max(gain, best.get((e["type"], e["layer"]), float("-inf")))
        grids[name] = best
    return grids


def figure7_early(out_dir: Path, results: dict[str, dict]) -> dict[str, dict[tuple[str, int], float]]:
    """benchmark -> {(type, layer): the best gain among candidates --halving stopped early, on the rows they had},
    for the cells no candidate reached all of val in."""
    from ..evaluation.metrics import lower_is_better
    from .report import stopped_early

    full = figure7_grid(out_dir, results)
    out = {}
    for name, r in results.items():
        sign = -1 if lower_is_better(r["metric"]) else 100
        cells: dict[tuple[str, int], float] = {}
        for row, base in stopped_early(Path(out_dir) / name, []):
            e = row["edits"][0]
            if (e["type"], e["layer"]) in full.get(name, {}) or r["metric"] not in row["metrics"]:
                continue
            gain = sign * (row["metrics"][r["metric"]] - base["metrics"][r["metric"]])
            cells[(e["type"], e["layer"])] = max(gain, cells.get((e["type"], e["layer"]), float("-inf")))
        out[name] = cells
    return out


def figure7(out_dir: Path, results: dict[str, dict]) -> Path | None:
    """The val gain of the best rho per (benchmark, layer), for mlp_in and mlp_out: which layers help which task
    (the paper's Figure 7). In points for rates; in the metric's own units, sign flipped, for a loss. A cell no
    candidate was evaluated in (a prescreen's budget) is grey and hatched, not the white of "no change"; a cell
    whose candidates halving stopped early shows their gain on the rows they had, dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Patch, Rectangle

    grids = figure7_grid(out_dir, results)
    early = figure7_early(out_dir, results)
    layers = sorted({layer for g in list(grids.values()) + list(early.values()) for _, layer in g})
    for name, r in results.items():  # the grid's layers, evaluated or not
        layers = sorted(set(layers) | set(range(r["layers"][0], r["layers"][1] + 1)) if r.get("layers") else layers)
    if not layers:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 0.45 * len(layers) * 2 + 4), 1.6 + 0.5 * len(grids)),
                             squeeze=False, sharey=True)
    values = {t: np.array([[g.get((t, layer), early[n].get((t, layer), np.nan)) for layer in layers]
                           for n, g in grids.items()]) for t in ("mlp_in", "mlp_out")}
    span = max(1e-9, max(float(np.nanmax(np.abs(v))) if np.isfinite(v).any() else 0 for v in values.values()))
    cmap = plt.get_cmap("RdBu").with_extremes(bad="#c8c8c8")
    for ax, (t, v) in zip(axes[0], values.items()):
        im = ax.imshow(np.ma.masked_invalid(v), cmap=cmap, vmin=-span, vmax=span, aspect="auto")
        for i, n in enumerate(grids):
            for j, layer in enumerate(layers):
                if (t, layer) in grids[n]:
                    continue
                hatch = ".." if (t, layer) in early[n] else "///"
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch=hatch, lw=0, color="#555555"))
        ax.set_title(t, fontsize=9)
        ax.set_xticks(range(len(layers)), [str(x) for x in layers], fontsize=7)
        ax.set_yticks(range(len(grids)), list(grids), fontsize=8)
        ax.set_xlabel("layer")
    fig.suptitle("val gain of the best rho over the base model, per benchmark and layer", fontsize=9, y=1.04)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="points (loss: its decrease)")
    fig.legend(handles=[Patch(facecolor="#c8c8c8", hatch="///", edgecolor="#555555", label="not evaluated"),
                        Patch(facecolor="white", hatch="..", edgecolor="#555555",
                              label="stopped early by halving (gain on the rows it had)")],
               loc="upper center", bbox_to_anchor=(0.45, -0.04 - 0.1 / max(len(grids), 1)), ncol=2, fontsize=7,
               frameon=False)
    path = Path(out_dir) / "figure7.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def write_table1(out_dir: Path, model: str, results: dict, skipped: dict, seconds: float,
                 layout_notes: list[str] | None = None) -> Path:
    path = Path(out_dir) / "table1.md"
    figure7(out_dir, results)
    path.write_text(table1(model, results, skipped, seconds, layout_notes))
    (Path(out_dir) / "table1.json").write_text(json.dumps({"model": model, "paper": paper_key(model),
                                                           "results": results, "skipped": skipped,
                                                           "seconds": seconds}, indent=2) + "\n")
    return path
