"""Factorized folders that plain transformers loads: modeling code written into the folder, named in config.json's
`auto_map`, so `from_pretrained(folder, trust_remote_code=True)` needs no laserlm. Dense folders stay plain."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

MODULE = "laser_modeling"
CLASS = "LaserFactorizedModel"
_TEMPLATE = "__LASER_BASE_CLASS__"


def _auto_names(arch: str) -> list[str]:
    """The Auto classes a user would load this architecture with."""
    if arch.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")):
        return ["AutoModelForCausalLM"]
    for suffix in ("ForMaskedLM", "ForImageClassification", "ForSequenceClassification"):
        if arch.endswith(suffix):
            return [f"AutoModel{suffix}"]
    return ["AutoModel"]


def remote_base(model) -> str | None:
    """The transformers class the folder's model is, where transformers ships it (a model that is itself remote
    code gets no wrapper: its own auto_map stays)."""
    import transformers

    name = type(model).__name__
    if getattr(model.config, "auto_map", None) or not hasattr(transformers, name):
        return None
    return name


def write_remote_code(folder: Path, model, factorized: dict) -> bool:
    """Write laser_modeling.py and point config.json at it; False where the architecture is not transformers'."""
    base = remote_base(model)
    if base is None or not factorized:
        return False
    text = (resources.files("laserlm.models") / "remote" / f"{MODULE}.py").read_text(encoding="utf-8")
    (folder / f"{MODULE}.py").write_text(text.replace(_TEMPLATE, base, 1), encoding="utf-8")
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["auto_map"] = {name: f"{MODULE}.{CLASS}" for name in _auto_names(base)}
    config["laser_factorized"] = factorized
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return True


def is_laser_remote(config) -> bool:
    """config.json's auto_map points at the code laserlm wrote (laserlm itself loads such folders natively)."""
    auto_map = getattr(config, "auto_map", None) or {}
    return any(str(v).startswith(f"{MODULE}.") for v in auto_map.values())
