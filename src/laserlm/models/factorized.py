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


def worth_factorizing(shape: tuple[int, int], rank: int | None) -> bool:
    """Factors take k(m+n) numbers against m*n dense: only store them where that is smaller."""
    return rank is not None and rank > 0 and rank * (shape[0] + shape[1]) < shape[0] * shape[1]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def read_recipe(folder: Path) -> dict | None:
    path = Path(folder) / RECIPE
    return json.loads(path.read_text()) if path.is_file() else None


def factor_tensors(name: str, module: LowRankLinear) -> dict[str, torch.Tensor]:
    return {f"{name}.down": module.down.weight.detach().contiguous(), f"{name}.up": module.up.weight.detach().contiguous()}


def dense_entries(name: str, module: LowRankLinear, keep_factors: bool) -> dict[str, torch.Tensor]:
    """What model.safetensors holds for a factorized module: its bias, and its dense weight unless the
    factors are stored beside it (in the layout transformers expects: Conv1D in x out)."""
    out = {}
    if module.up.bias is not None:
        out[f"{name}.bias"] = module.up.bias.detach()
    if not keep_factors:
        w = (module.up.weight @ module.down.weight).detach()
        out[f"{name}.weight"] = (w.T if module.conv1d else w).contiguous()
    return out


def factor_info(module: LowRankLinear) -> dict:
    return {"rank": module.rank, "shape": [module.out_features, module.in_features], "bias": module.up.bias is not None}


def attach_factors(model: nn.Module, folder: Path, recipe: dict) -> nn.Module:
    """Swap each factorized matrix of a freshly loaded model for its LowRankLinear.

    The folder's model.safetensors lacks those matrices (transformers initialised them and we drop
    that), so transformers' own loading, key renames included, handles every other tensor.
    """
    from safetensors.torch import load_file

    factors = load_file(Path(folder) / FACTORS)
    for name, info in recipe["factorized"].items():
        old = model.get_submodule(name)
        w = old.weight
        out_f, in_f = info["shape"]
        new = LowRankLinear(in_f, out_f, info["rank"], info["bias"], dtype=w.dtype, device=w.device,
                            conv1d=isinstance(old, Conv1D))
        with torch.no_grad():
            new.down.weight.copy_(factors[f"{name}.down"])
            new.up.weight.copy_(factors[f"{name}.up"])
            if info["bias"]:
                new.up.bias.copy_(old.bias)
        replace_module(model, name, new)
    return model
