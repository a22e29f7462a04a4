"""Where each canonical matrix lives in a model: the table, user patterns, or discovery."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field

import torch
from torch import nn

from .architectures import ARCHITECTURES, GROUPS
from ..errors import UserError

try:
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a hard dependency
    Conv1D = ()


def is_matrix_module(module: nn.Module) -> bool:
    """A module whose `weight` is one 2-D matrix we know how to edit."""
    return isinstance(module, (nn.Linear, Conv1D)) or getattr(module, "is_factored", False)


@dataclass(frozen=True)
class Target:
    """One matrix of the model: its canonical address and the module that holds it."""

    type: str
    layer: int
    name: str
    module: nn.Module = field(compare=False, repr=False)

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    @property
    def shape(self) -> tuple[int, int]:
        """The shape as (out_features, in_features), whatever the storage layout."""
        if getattr(self.module, "is_factored", False):
            return (self.module.out_features, self.module.in_features)
        w = self.module.weight
        return (w.shape[1], w.shape[0]) if isinstance(self.module, Conv1D) else tuple(w.shape)


@dataclass
class Layout:
    """Maps (type, layer) to a module name, through one `{layer}` pattern per type."""

    model: nn.Module
    model_type: str
    patterns: dict[str, str]
    n_layers: int
    source: str  # "table", "pattern" or "discovered"
    modules: dict[str, nn.Module] = field(repr=False, default_factory=dict)
    blocks: str | None = None  # the ModuleList of blocks, when known (the search's prefix cache needs it)
    attn: str | None = None  # a block's attention module, relative to the block, when the table knows it

    @property
    def types(self) -> list[str]:
        return list(self.patterns)

    def expand_types(self, spec: str) -> list[str]:
        """A type or group name to the list of types this model has."""
        if spec in self.patterns:
            return [spec]
        if spec in GROUPS:
            found = [t for t in self.patterns if t.startswith(GROUPS[spec])]
            if found:
                return found
        raise UserError(
            f"unknown matrix type {spec!r} for {self.model_type}: use one of "
            f"{', '.join(self.types)} or a group ({', '.join(GROUPS)})"
        )

    def expand_type_list(self, specs: str) -> list[str]:
        """A comma list of types and groups ("mlp,attn_o") to distinct types, in order."""
        return list(dict.fromkeys(t for spec in specs.split(",") for t in self.expand_types(spec.strip())))

    def target(self, type_: str, layer: int) -> Target:
        if type_ not in self.patterns:
            self.expand_types(type_)  # raises the helpful error
        if not 0 <= layer < self.n_layers:
            raise UserError(
                f"layer {layer} is out of range: {self.model_type} has layers 0-{self.n_layers - 1}"
            )
        name = self.patterns[type_].format(layer=layer)
        module = self.modules.get(name)
        if module is None:
            raise UserError(f"{type_}:{layer} names module {name!r}, which this model does not have")
        return Target(type_, layer, name, module)

    def targets(self, types: list[str] | None = None) -> list[Target]:
        out = []
        for layer in range(self.n_layers):
            for t in types or self.types:
                name = self.patterns[t].format(layer=layer)
                if name in self.modules:
                    out.append(Target(t, layer, name, self.modules[name]))
        return out


def _base_prefix(model: nn.Module) -> str:
    base = getattr(model, "base_model", model)
    for name, module in model.named_modules():
        if module is base:
            return f"{name}." if name else ""
    return ""


def _get(model: nn.Module, dotted: str) -> nn.Module | None:
    try:
        return model.get_submodule(dotted)
    except AttributeError:
        return None


def _from_table(model: nn.Module, model_type: str, modules: dict) -> Layout | None:
    entries = ARCHITECTURES.get(model_type)
    for entry in entries if isinstance(entries, list) else [entries] if entries else []:
        if (layout := _from_entry(model, model_type, entry, modules)) is not None:
            return layout
    return None


def _from_entry(model: nn.Module, model_type: str, entry: dict, modules: dict) -> Layout | None:
    blocks_path = _base_prefix(model) + entry["blocks"]
    blocks = _get(model, blocks_path)
    if not isinstance(blocks, nn.ModuleList):
        return None
    patterns = {t: f"{blocks_path}.{{layer}}.{rel}" for t, rel in entry["types"].items()}
    patterns = {t: p for t, p in patterns.items() if p.format(layer=0) in modules}
    if not patterns:
        return None
    attn = entry.get("attn")
    attn = attn if attn and f"{blocks_path}.0.{attn}" in modules else None
    return Layout(model, model_type, patterns, len(blocks), "table", modules, blocks_path, attn)


def _discover(model: nn.Module, model_type: str, modules: dict) -> Layout:
    """Find the block list (the largest ModuleList of identical blocks) and its matrix leaves."""
    best, best_size = None, 0
    for name, module in modules.items():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if len({type(b) for b in module}) != 1:
                continue
            size = sum(p.numel() for p in module.parameters())
            if size > best_size:
                best, best_size = name, size
    if best is None:
        raise UserError(
            f"cannot find the transformer blocks of this {model_type} model: "
            "address its matrices by module-name patterns, e.g. laser search --module-pattern 'path.{layer}.to.linear'"
        )
    block0 = modules[best][0]
    patterns = {
        rel: f"{best}.{{layer}}.{rel}" for rel, m in block0.named_modules() if rel and is_matrix_module(m)
    }
    print(
        f"laser: no architecture entry for model_type {model_type!r}; discovered {len(modules[best])} "
        f"blocks at {best!r} with matrices {', '.join(patterns)}",
        file=sys.stderr,
    )
    return Layout(model, model_type, patterns, len(modules[best]), "discovered", modules, best)


def _from_patterns(model: nn.Module, model_type: str, specs: list[str], modules: dict) -> Layout:
    patterns: dict[str, str] = {}
    n_layers = 0
    for spec in specs:
        type_, _, pattern = spec.rpartition("=")
        if "{layer}" not in pattern:
            raise UserError(f"module pattern {spec!r} has no '{{layer}}' placeholder, e.g. 'blocks.{{layer}}.mlp.fc1'")
        others = [m.group(0) for m in re.finditer(r"\{[^}]*\}?", pattern) if m.group(0) != "{layer}"]
        if others or pattern.replace("{layer}", "").count("}"):
            bad = others[0] if others else "}"
            raise UserError(f"module pattern {spec!r} has {bad!r}: the only placeholder is {{layer}}, "
                            "e.g. 'blocks.{layer}.mlp.fc1'")
        type_ = type_ or pattern.rsplit(".", 1)[-1]
        regex = re.compile(re.escape(pattern).replace(re.escape("{layer}"), r"(\d+)") + "$")
        layers = [int(m.group(1)) for name in modules if (m := regex.match(name))]
        layers = [i for i in layers if is_matrix_module(modules[pattern.format(layer=i)])]
        if not layers:
            raise UserError(f"module pattern {spec!r} matches no Linear/Conv1D module of this model")
        patterns[type_] = pattern
        n_layers = max(n_layers, max(layers) + 1)
    return Layout(model, model_type, patterns, n_layers, "pattern", modules)


def model_type_of(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) or type(model).__name__


def get_layout(model: nn.Module, module_patterns: list[str] | None = None) -> Layout:
    """The layout of `model`: user patterns if given, else the table, else discovery (announced)."""
    modules = dict(model.named_modules())
    model_type = model_type_of(model)
    if module_patterns:
        return _from_patterns(model, model_type, module_patterns, modules)
    return _from_table(model, model_type, modules) or _discover(model, model_type, modules)
