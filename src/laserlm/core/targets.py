"""One matrix of a model: a module's 2-D weight, one expert's slice of a 3-D parameter, or a mixture of them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

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
    """One matrix of the model: its canonical address and where it is stored.

    Most targets are a module's 2-D `weight`. One expert of a mixture stored as a 3-D parameter is the slice
    `param[index]`. A mixture-of-experts layer's `mlp_*` target holds one part per expert matrix (shared experts
    included): an edit of it reduces every part with its own SVD; `TYPE@E` (`mlp_in@3`, `mlp_in@shared`) names one.
    """

    type: str
    layer: int
    name: str
    module: nn.Module = field(compare=False, repr=False)
    param: str = "weight"
    index: int | None = None  # the expert's slice of a 3-D parameter
    transposed: bool = False  # stored in x out: GPT-2's Conv1D, experts multiplied as x @ W
    expert: str | None = None  # the expert this matrix belongs to: its index, or "shared"
    parts: tuple = field(default=(), compare=False, repr=False)  # a mixture: one Target per expert matrix

    @property
    def is_mixture(self) -> bool:
        return bool(self.parts)

    def matrices(self) -> list["Target"]:
        """The 2-D matrices an edit of this target reduces, each with its own SVD."""
        return list(self.parts) or [self]

    def expert_part(self, expert: str) -> "Target":
        """The part of a mixture that expert `expert` holds (one matrix, or several for a shared MLP)."""
        found = [p for p in self.parts if p.expert == expert]
        if not found:
            names = sorted({p.expert for p in self.parts if p.expert is not None},
                           key=lambda e: (not e.isdigit(), int(e) if e.isdigit() else 0, e))
            raise UserError(f"{self.type}:{self.layer} has no expert {expert!r}: "
                            + (f"use one of {', '.join(names[:4])}{', ...' if len(names) > 4 else ''}"
                               if names else "it is not a mixture of experts"))
        if len(found) == 1:
            return replace(found[0], type=f"{self.type}@{expert}")
        return replace(self, type=f"{self.type}@{expert}", parts=tuple(found))

    @property
    def stored(self) -> torch.Tensor:
        """The parameter that holds this matrix (the whole 3-D tensor for one expert's slice)."""
        if self.parts:
            raise UserError(f"{self.type}:{self.layer} is a mixture of {len(self.parts)} matrices: name one expert, "
                            f"e.g. {self.type}@0:{self.layer}")
        return getattr(self.module, self.param)

    @property
    def weight(self) -> torch.Tensor:
        w = self.stored
        return w if self.index is None else w[self.index]

    @property
    def shape(self) -> tuple[int, int]:
        """The shape as (out_features, in_features), whatever the storage layout."""
        if self.parts:
            return self.parts[0].shape
        if getattr(self.module, "is_factored", False):
            return (self.module.out_features, self.module.in_features)
        w = getattr(self.module, self.param, None)
        if not isinstance(w, torch.Tensor) or w.dim() < 2 or not w.is_floating_point():
            return (getattr(self.module, "out_features", 0), getattr(self.module, "in_features", 0))
        shape = tuple(w.shape[-2:])
        return (shape[1], shape[0]) if self.transposed else shape

    @property
    def numel(self) -> int:
        return sum(p.shape[0] * p.shape[1] for p in self.matrices())
