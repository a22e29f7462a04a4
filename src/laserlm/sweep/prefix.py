"""Prefix caching: the hidden states entering block l do not depend on an edit at l or above, and the
output of block l's attention does not depend on an edit of block l's MLP.

`capture` runs the real model up to block l and returns what enters it; `replay` runs the real model
with blocks below l patched to hand back those cached states (and, for an MLP edit, block l's attention
module patched to hand back its cached output), so only the rest does work. No model code is rewritten:
embeddings, masks, rotary tables, layer norms, residual sums and the final norm come from the HF forward.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ..evaluation.scoring import no_cache

_ABSENT = object()


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the states we want are in hand."""


class PrefixCache:
    def __init__(self, model: nn.Module, blocks_path: str):
        self.model = model
        self.blocks: nn.ModuleList = model.get_submodule(blocks_path)
        self.tuple_out = self._probe_tuple_output()

    def _probe_tuple_output(self) -> int:
        """0 if blocks return a tensor, else the tuple's length (hidden states first, e.g. GPT-J)."""
        seen = {}

        def hook(_m, _a, out):
            seen["n"] = len(out) if isinstance(out, tuple) else 0
            raise _Stop

        handle = self.blocks[0].register_forward_hook(hook)
        try:
            with torch.inference_mode():
                ids = torch.tensor([[1, 2]], device=next(self.model.parameters()).device)
                self.model.base_model(input_ids=ids, **no_cache(self.model))
        except _Stop:
            pass
        finally:
            handle.remove()
        return seen.get("n", 0)

    @torch.inference_mode()
    def capture(self, layer: int, run) -> torch.Tensor:
        """The hidden states entering block `layer` during `run()` (a forward call); the rest is skipped."""
        seen = {}

        def pre(_m, args, kwargs):
            seen["h"] = args[0] if args else kwargs["hidden_states"]
            raise _Stop

        handle = self.blocks[layer].register_forward_pre_hook(pre, with_kwargs=True)
        try:
            run()
        except _Stop:
            pass
        finally:
            handle.remove()
        return seen["h"]

    @contextmanager
    def record(self, layer: int):
        """Collect, without stopping anything, the hidden states entering block `layer` on each call."""
        states: list[torch.Tensor] = []

        def pre(_m, args, kwargs):
            states.append(args[0] if args else kwargs["hidden_states"])

        handle = self.blocks[layer].register_forward_pre_hook(pre, with_kwargs=True)
        try:
            yield states
        finally:
            handle.remove()

    @torch.inference_mode()
    def capture_attention(self, layer: int, attn: str, hidden: torch.Tensor, run):
        """What block `layer`'s attention module returns during `run()`, the blocks below replayed from
        `hidden`; the forward stops there."""
        seen = {}

        def hook(_m, _args, out):
            seen["out"] = out
            raise _Stop

        handle = self.blocks[layer].get_submodule(attn).register_forward_hook(hook)
        try:
            with self.replay(layer, hidden):
                run()
        except _Stop:
            pass
        finally:
            handle.remove()
        return seen["out"]

    @contextmanager
    def replay(self, layer: int, hidden: torch.Tensor, attention=None, attn: str | None = None):
        """Inside this block, blocks below `layer` return `hidden` at once instead of computing, and, given
        `attention`, block `layer`'s attention module `attn` returns it (an MLP edit at `layer` cannot change
        it: the block's MLP comes after its attention, or beside it)."""
        out = hidden if not self.tuple_out else (hidden,) + (None,) * (self.tuple_out - 1)

        def skip(*_a, **_k):
            return out

        patched = list(self.blocks)[:layer]
        if attention is not None:
            patched.append(self.blocks[layer].get_submodule(attn))
        # An instance attribute shadows the class's forward. One may already be there: accelerate's
        # device-map hook *is* the instance's forward, so it is put back, never deleted.
        saved = [block.__dict__.get("forward", _ABSENT) for block in patched]
        for block in patched[:layer]:
            block.forward = skip
        if attention is not None:
            patched[layer].forward = lambda *_a, **_k: attention
        try:
            yield
        finally:
            for block, old in zip(patched, saved):
                if old is _ABSENT:
                    del block.forward
                else:
                    block.forward = old
