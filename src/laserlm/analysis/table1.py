"""table1.md: base and LASER accuracy and loss per benchmark, as the paper's Table 1, from reproduce's runs.

The paper's own numbers are data (data/paper/table1.json) and appear beside ours when the model is one the
paper reports; a value not yet transcribed there shows as "-".
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from ..core.edits import Edit


def paper_numbers(model: str) -> dict:
    """The paper's rows for `model` (a hub id, or a folder named like one), or {}."""
    data = json.loads((resources.files("laserlm") / "data" / "paper" / "table1.json").read_text(encoding="utf-8"))
    name = model.rstrip("/")
    if name in data["models"]:
        return data["models"][name]
    key = data["aliases"].get(Path(name).name.lower())  # a local folder or another spelling of a known model
    return data["models"].get(key, {}) if key else {}


def _acc_metric(result: dict) -> str:
    return result["metric"]


def _loss(metrics: dict):
    return metrics.get("logloss")


def _fmt(value, pct=False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}" if pct else f"{value:.3f}"


def _paper(value) -> str:
    return "-" if value is None else f"{value:g}"


def table1(model: str, results: dict[str, dict], skipped: dict[str, str], seconds: float,
           grid: str = "mlp_in, mlp_out; every layer; rho in 0.9 ... 0.005") -> str:
    """Markdown for `results` (benchmark -> reproduce's result: best.json plus "n_val"/"n_test")."""
    paper = paper_numbers(model)
    lines = [f"# LASER on {model}: the paper's Table 1 protocol", "",
             f"Each benchmark: a search over {grid}, selected on val, reported on test, under `--protocol paper`. "
             "Accuracy is the protocol's primary metric (%); loss is the mean per-token NLL of the gold answer "
             "over the whole vocabulary.", ""]
    head = "| benchmark | metric | n val / test | base acc | LASER acc | base loss | LASER loss | (tau, l, rho) |"
    rule = "|---|---|---|---|---|---|---|---|"
    if paper:
        head += " paper base acc | paper LASER acc | diff (ours - paper), LASER acc |"
        rule += "---|---|---|"
    lines += [head, rule]
    for name, r in results.items():
        metric = _acc_metric(r)
        base, best = r["base"], r["best"]
        edit = " ".join(str(Edit.from_json(e)) for e in best["edits"]) or "(none better than base)"
        row = (f"| {name} | {metric} | {r.get('n_val', '?')} / {r.get('n_test', '?')} | {_fmt(base['test'], True)} | "
               f"{_fmt(best['test'], True)} | {_fmt(_loss(base['test_metrics']))} | "
               f"{_fmt(_loss(best['test_metrics']))} | `{edit}` |")
        if paper:
            p = paper.get(name, {})
            ours = best["test"]
            diff = "-" if p.get("laser_acc") is None or ours is None else f"{100 * ours - p['laser_acc']:+.1f}"
            row += f" {_paper(p.get('base_acc'))} | {_paper(p.get('laser_acc'))} | {diff} |"
        lines.append(row)
    for name, why in skipped.items():
        lines.append(f"| {name} | skipped: {why} |" + " |" * (7 + (3 if paper else 0) - 1))
    lines += ["", f"Total time: {seconds:.0f} s."]
    return "\n".join(lines) + "\n"


def write_table1(out_dir: Path, model: str, results: dict, skipped: dict, seconds: float, grid: str = "") -> Path:
    path = Path(out_dir) / "table1.md"
    path.write_text(table1(model, results, skipped, seconds, grid) if grid else table1(model, results, skipped, seconds))
    (Path(out_dir) / "table1.json").write_text(json.dumps({"model": model, "results": results, "skipped": skipped,
                                                           "seconds": seconds}, indent=2) + "\n")
    return path
