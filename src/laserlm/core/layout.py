"""Where each canonical matrix lives in a model: user patterns, the table, the structure (core/structure.py), or,
last, discovery of every matrix under the largest block list."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field

from torch import nn

from .architectures import ARCHITECTURES, GROUPS
from .targets import Conv1D, Target, is_matrix_module  # noqa: F401 - re-exported
from ..errors import UserError


@dataclass
class Layout:
    """Maps (type, layer) to its Target. Blocks may differ (dense and mixture-of-experts layers, hybrids), so the
    map is per layer; `patterns` gives each type's module names with the layer as `{layer}`, for display."""

    model: nn.Module
    model_type: str
    per_layer: list[dict[str, Target]]
    source: str  # "table", "structure", "pattern" or "discovered"
    blocks: str | None = None  # the ModuleList of blocks, when known (the search's prefix cache needs it)
    attn_paths: list[str | None] = field(default_factory=list)  # each block's attention module, relative to it
    notes: list[str] = field(default_factory=list)  # what the structure found: "moe", "fused gate+up", ...

    @property
    def n_layers(self) -> int:
        return len(self.per_layer)

    @property
    def types(self) -> list[str]:
        return list(dict.fromkeys(t for layer in self.per_layer for t in layer))

    @property
    def attn(self) -> str | None:
        """The attention module's path in a block, when every block that has one names it the same."""
        names = {a for a in self.attn_paths if a is not None}
        return names.pop() if len(names) == 1 else None

    def attn_at(self, layer: int) -> str | None:
        return self.attn_paths[layer] if layer < len(self.attn_paths) else None

    @property
    def patterns(self) -> dict[str, str]:
        out = {}
        for t in self.types:
            names = []
            for layer, targets in enumerate(self.per_layer):
                if t in targets:
                    names.append(_as_pattern(targets[t].name, self.blocks, layer))
            out[t] = " | ".join(dict.fromkeys(names))
        return out

    def expand_types(self, spec: str) -> list[str]:
        """A type or group name to the list of types this model has."""
        base, at, expert = spec.partition("@")
        if base in self.types:
            return [spec]
        if base in GROUPS:
            found = [t for t in self.types if t.startswith(GROUPS[base]) and "." not in t]
            if found:
                return [f"{t}{at}{expert}" for t in found]
        canonical = [t for t in self.types if "." not in t]
        raise UserError(
            f"unknown matrix type {spec!r} for {self.model_type}: use one of "
            f"{', '.join(canonical or self.types)} or a group ({', '.join(GROUPS)})"
        )

    def expand_type_list(self, specs: str) -> list[str]:
        """A comma list of types and groups ("mlp,attn_o") to distinct types, in order."""
        return list(dict.fromkeys(t for spec in specs.split(",") for t in self.expand_types(spec.strip())))

    def target(self, type_: str, layer: int) -> Target:
        base, _, expert = type_.partition("@")
        if base not in self.types:
            self.expand_types(type_)  # raises the helpful error
        if not 0 <= layer < self.n_layers:
            raise UserError(
                f"layer {layer} is out of range: {self.model_type} has layers 0-{self.n_layers - 1}"
            )
        found = self.per_layer[layer].get(base)
        if found is None:
            where = [i for i, t in enumerate(self.per_layer) if base in t]
            raise UserError(f"{base}:{layer} does not exist: block {layer} of this {self.model_type} has no such "
                            f"matrix (it is in layers {_ranges(where)})")
        return found.expert_part(expert) if expert else found

    def targets(self, types: list[str] | None = None) -> list[Target]:
        return [layer[t] for layer in self.per_layer for t in (types or self.types) if t in layer]


def _as_pattern(name: str, blocks: str | None, layer: int) -> str:
    if blocks and name.startswith(f"{blocks}.{layer}."):
        return f"{blocks}.{{layer}}.{name[len(blocks) + len(str(layer)) + 2:]}"
    return name


def _ranges(layers: list[int]) -> str:
    out, start = [], None
    for i, x in enumerate(layers):
        if start is None:
            start = x
        if i + 1 == len(layers) or layers[i + 1] != x + 1:
            out.append(str(start) if start == x else f"{start}-{x}")
            start = None
    return ",".join(out) or "none"


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
    per_layer = []
    for layer in range(len(blocks)):
        found = {}
        for t, rel in entry["types"].items():
            name = f"{blocks_path}.{layer}.{rel}"
            if name in modules:
                found[t] = _plain_target(t, layer, name, modules[name])
        per_layer.append(found)
    if not per_layer or not per_layer[0]:
        return None
    attn = entry.get("attn")
    attn_paths = [attn if attn and f"{blocks_path}.{i}.{attn}" in modules else None for i in range(len(blocks))]
    return Layout(model, model_type, per_layer, "table", blocks_path, attn_paths)


def _plain_target(type_: str, layer: int, name: str, module: nn.Module) -> Target:
    return Target(type_, layer, name, module, transposed=isinstance(module, Conv1D))


def _from_structure(model: nn.Module, model_type: str) -> Layout | None:
    """Canonical types found by role (core/structure.py), for a model the table does not know."""
    from .structure import analyze_block, expert_counts, find_blocks, hidden_size

    path = find_blocks(model)
    if path is None:
        return None
    blocks = model.get_submodule(path)
    hidden, experts = hidden_size(model), expert_counts(model)
    found = [analyze_block(model, block, i, path, hidden, experts) for i, block in enumerate(blocks)]
    if not any("mlp_in" in b.targets or "mlp_out" in b.targets for b in found):
        return None
    notes = sorted({n for b in found for n in b.notes})
    return Layout(model, model_type, [b.targets for b in found], "structure", path, [b.attn for b in found], notes)


def _discover(model: nn.Module, model_type: str, modules: dict) -> Layout:
    """Last resort: the largest ModuleList of identical blocks, its matrix leaves named by their paths."""
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
    per_layer = [{rel: _plain_target(rel, i, f"{best}.{i}.{rel}", m) for rel, m in block.named_modules()
                  if rel and is_matrix_module(m)} for i, block in enumerate(modules[best])]
    print(
        f"laser: no architecture entry for model_type {model_type!r} and no MLP found by structure; discovered "
        f"{len(per_layer)} blocks at {best!r} with matrices {', '.join(per_layer[0])}",
        file=sys.stderr,
    )
    return Layout(model, model_type, per_layer, "discovered", best, [None] * len(per_layer))


def _from_patterns(model: nn.Module, model_type: str, specs: list[str], modules: dict) -> Layout:
    patterns: dict[str, str] = {}
    found: dict[str, list[int]] = {}
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
        patterns[type_], found[type_] = pattern, layers
    n_layers = max(max(v) for v in found.values()) + 1
    per_layer = [{t: _plain_target(t, i, patterns[t].format(layer=i), modules[patterns[t].format(layer=i)])
                  for t in patterns if i in found[t]} for i in range(n_layers)]
    return Layout(model, model_type, per_layer, "pattern", None, [None] * n_layers)


def model_type_of(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) or type(model).__name__


def get_layout(model: nn.Module, module_patterns: list[str] | None = None) -> Layout:
    """The layout of `model`: user patterns if given, else the table, else the structure (core/structure.py),
    else discovery (announced)."""
    modules = dict(model.named_modules())
    model_type = model_type_of(model)
    if module_patterns:
        return _from_patterns(model, model_type, module_patterns, modules)
    return (_from_table(model, model_type, modules) or _from_structure(model, model_type)
            or _discover(model, model_type, modules))
