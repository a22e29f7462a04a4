"""Low-rank factor storage: a reduced matrix kept as two thin matrices (m x k and k x n).

`laser apply --factorized` keeps the factors in laser_factors.safetensors and leaves those matrices out of
model.safetensors; loading goes through plain `from_pretrained` (so transformers' own key renames
apply) and `attach_factors` then swaps in a LowRankLinear per factorized matrix.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..core.layout import Conv1D
from ..core.methods import Reduced

RECIPE = "laser_recipe.json"
FACTORS = "laser_factors.safetensors"


class LowRankLinear(nn.Module):
    """y = up(down(x)): a rank-k stand-in for an out x in Linear (or Conv1D), same inputs and outputs."""

    is_low_rank = True
    is_factored = True

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool, dtype=None, device=None,
                 conv1d: bool = False):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.conv1d = conv1d  # it replaces a GPT-2 Conv1D, whose dense weight is stored in x out
        self.down = nn.Linear(in_features, rank, bias=False, dtype=dtype, device=device)
        self.up = nn.Linear(rank, out_features, bias=bias, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    @property
    def weight(self) -> torch.Tensor:
        """The dense out x in matrix, for inspection only."""
        return self.up.weight @ self.down.weight

    @classmethod
    def from_reduced(cls, module: nn.Module, reduced: Reduced) -> "LowRankLinear":
        w = module.weight
        conv = isinstance(module, Conv1D)
        # Stored layout is left @ right; Linear stores out x in, Conv1D in x out.
        down, up = (reduced.left.mT, reduced.right.mT) if conv else (reduced.right, reduced.left)
        out_f, in_f = (w.shape[1], w.shape[0]) if conv else (w.shape[0], w.shape[1])
        bias = getattr(module, "bias", None)
        new = cls(in_f, out_f, reduced.rank, bias is not None, dtype=w.dtype, device=w.device, conv1d=conv)
        with torch.no_grad():
            new.down.weight.copy_(down)
            new.up.weight.copy_(up)
            if bias is not None:
                new.up.bias.copy_(bias)
        return new


    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        return {f"{name}.down": self.down.weight.detach().contiguous(), f"{name}.up": self.up.weight.detach().contiguous()}

    def info(self) -> dict:
        return {"rank": self.rank, "shape": [self.out_features, self.in_features], "bias": self.up.bias is not None}

    @property
    def bias(self) -> torch.Tensor | None:
        return self.up.bias

    @classmethod
    def from_info(cls, info: dict, factors: dict, name: str, old: nn.Module) -> "LowRankLinear":
        w = old.weight
        out_f, in_f = info["shape"]
        new = cls(in_f, out_f, info["rank"], info["bias"], dtype=w.dtype, device=w.device,
                  conv1d=isinstance(old, Conv1D))
        with torch.no_grad():
            new.down.weight.copy_(factors[f"{name}.down"])
            new.up.weight.copy_(factors[f"{name}.up"])
            if info["bias"]:
                new.up.bias.copy_(old.bias)
        return new


class ClusteredLowRankLinear(nn.Module):
    """The output features in groups, each group's rows a rank-k_j product up_j(down_j(x)): the stand-in for an
    out x in Linear (or Conv1D) reduced by a clusterC edit. `order[i]` is the output feature that position i of
    the groups' concatenated outputs is."""

    is_factored = True
    is_clustered = True

    def __init__(self, in_features: int, out_features: int, sizes: list[int], ranks: list[int], bias: bool,
                 dtype=None, device=None, conv1d: bool = False):
        super().__init__()
        self.in_features, self.out_features, self.conv1d = in_features, out_features, conv1d
        self.rank = sum(ranks)
        self.down = nn.ModuleList(nn.Linear(in_features, k, bias=False, dtype=dtype, device=device) for k in ranks)
        self.up = nn.ModuleList(nn.Linear(k, size, bias=False, dtype=dtype, device=device)
                                for k, size in zip(ranks, sizes))
        self.register_buffer("order", torch.arange(out_features, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([up(down(x)) for down, up in zip(self.down, self.up)], -1)
        y = y.index_select(-1, torch.argsort(self.order))
        return y + self.bias if self.bias is not None else y

    @property
    def weight(self) -> torch.Tensor:
        """The dense out x in matrix, for inspection only."""
        stacked = torch.cat([up.weight @ down.weight for down, up in zip(self.down, self.up)])
        return stacked[torch.argsort(self.order)]

    @classmethod
    def from_reduced(cls, module: nn.Module, reduced: Reduced) -> "ClusteredLowRankLinear":
        w = module.weight
        conv = isinstance(module, Conv1D)
        out_f, in_f = (w.shape[1], w.shape[0]) if conv else (w.shape[0], w.shape[1])
        bias = getattr(module, "bias", None)
        new = cls(in_f, out_f, [len(i) for i, _, _ in reduced.blocks], [left.shape[1] for _, left, _ in reduced.blocks],
                  bias is not None, dtype=w.dtype, device=w.device, conv1d=conv)
        with torch.no_grad():
            for (idx, left, right), down, up in zip(reduced.blocks, new.down, new.up):
                down.weight.copy_(right)
                up.weight.copy_(left)
            new.order.copy_(torch.cat([idx for idx, _, _ in reduced.blocks]))
            if bias is not None:
                new.bias.copy_(bias)
        return new

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        out = {f"{name}.order": self.order.detach().clone()}
        for j, (down, up) in enumerate(zip(self.down, self.up)):
            out[f"{name}.down.{j}"] = down.weight.detach().contiguous()
            out[f"{name}.up.{j}"] = up.weight.detach().contiguous()
        return out

    def info(self) -> dict:
        return {"clusters": [up.out_features for up in self.up], "ranks": [d.out_features for d in self.down],
                "shape": [self.out_features, self.in_features], "bias": self.bias is not None}

    @classmethod
    def from_info(cls, info: dict, factors: dict, name: str, old: nn.Module) -> "ClusteredLowRankLinear":
        w = old.weight
        out_f, in_f = info["shape"]
        new = cls(in_f, out_f, info["clusters"], info["ranks"], info["bias"], dtype=w.dtype, device=w.device,
                  conv1d=isinstance(old, Conv1D))
        with torch.no_grad():
            for j, (down, up) in enumerate(zip(new.down, new.up)):
                down.weight.copy_(factors[f"{name}.down.{j}"])
                up.weight.copy_(factors[f"{name}.up.{j}"])
            new.order.copy_(factors[f"{name}.order"])
            if info["bias"]:
                new.bias.copy_(old.bias)
        return new


def factored(module: nn.Module, reduced: Reduced) -> nn.Module | None:
    """The factored stand-in for `module` reduced as `reduced`, where its factors take fewer numbers than the
    dense m x n matrix (k(m + n), or the sum over groups); else None."""
    m, n = module.weight.shape
    count = reduced.parameters
    if count is None or count >= m * n or not reduced.rank:
        return None
    return (ClusteredLowRankLinear if reduced.blocks is not None else LowRankLinear).from_reduced(module, reduced)


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def read_recipe(folder: Path) -> dict | None:
    path = Path(folder) / RECIPE
    return json.loads(path.read_text()) if path.is_file() else None


def dense_entries(name: str, module: nn.Module, keep_factors: bool) -> dict[str, torch.Tensor]:
    """What model.safetensors holds for a factorized module: its bias, and its dense weight unless the
    factors are stored beside it (in the layout transformers expects: Conv1D in x out)."""
    out = {}
    if module.bias is not None:
        out[f"{name}.bias"] = module.bias.detach()
    if not keep_factors:
        w = module.weight.detach()
        out[f"{name}.weight"] = (w.T if module.conv1d else w).contiguous()
    return out


def attach_factors(model: nn.Module, folder: Path, recipe: dict) -> nn.Module:
    """Swap each factorized matrix of a freshly loaded model for its LowRankLinear.

    The folder's model.safetensors lacks those matrices (transformers initialised them and we drop
    that), so transformers' own loading, key renames included, handles every other tensor.
    """
    from safetensors.torch import load_file

    factors = load_file(Path(folder) / FACTORS)
    for name, info in recipe["factorized"].items():
        cls = ClusteredLowRankLinear if "clusters" in info else LowRankLinear
        replace_module(model, name, cls.from_info(info, factors, name, model.get_submodule(name)))
    return model
