"""Prefix caching: the hidden states entering block l do not depend on an edit at l or above, and the
output of block l's attention does not depend on an edit of block l's MLP.

`capture` runs the real model up to block l and returns what enters it; `replay` runs the real model
with blocks below l patched to hand back those cached states (and, for an MLP edit, block l's attention
module patched to hand back its cached output), so only the rest does work. No model code is rewritten:
embeddings, masks, rotary tables, layer norms, residual sums and the final norm come from the HF forward.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..evaluation.fastpath import no_cache, trunk

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
                trunk(self.model)(input_ids=ids, **no_cache(self.model))
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


@dataclass
class ReplayCheck:
    """Whether the prefix cache (blocks below l replayed from their output) and the attention replay (block l's
    attention output reused for an MLP edit there) give the model's own hidden states."""

    prefix: bool
    attention: bool
    reasons: list[str] = field(default_factory=list)


_CHECKED: "weakref.WeakKeyDictionary[nn.Module, ReplayCheck]" = weakref.WeakKeyDictionary()


@torch.inference_mode()
def check_replay(model: nn.Module, layout) -> ReplayCheck:
    """Replay a probe batch through the prefix cache at a middle block and compare with a plain forward; for the
    attention replay, also check that the block runs its attention before its MLP. Once per model object."""
    from ..evaluation.fastpath import close, probe_ids

    found = _CHECKED.get(model)
    if found is not None:
        return found
    if layout.blocks is None:
        return ReplayCheck(False, False, ["no block list is known (module patterns): every candidate runs the whole "
                                          "model"])
    ids = probe_ids(model)
    dtype = next(model.parameters()).dtype

    def run():
        return trunk(model)(input_ids=ids, **no_cache(model)).last_hidden_state

    layer = layout.n_layers // 2
    try:
        prefix = PrefixCache(model, layout.blocks)
        ref = run().float()
        hidden = prefix.capture(layer, run)
        with prefix.replay(layer, hidden):
            ok = close(ref, run().float(), dtype)
    except Exception as e:  # noqa: BLE001 - any failure means: no replay for this model
        ok, hidden = False, None
        why = f"({type(e).__name__})"
    else:
        why = ""
    found = ReplayCheck(ok, False)
    if not ok:
        found.reasons.append(f"blocks cannot be replayed from the states entering them {why}(a block reads more than "
                             "the hidden states: keys and values shared across blocks, or a second residual stream)")
        _CHECKED[model] = found
        return found
    attn = layout.attn_at(layer)
    if attn is None:
        found.reasons.append(f"block {layer} has no attention module the structure could name: MLP edits recompute it")
    elif not _attention_first(model, layout, layer, run):
        found.reasons.append("a block runs its MLP before its attention: MLP edits recompute the attention")
    else:
        try:
            out = prefix.capture_attention(layer, attn, hidden, run)
            with prefix.replay(layer, hidden, out, attn):
                found.attention = close(ref, run().float(), dtype)
        except Exception:  # noqa: BLE001
            found.attention = False
        if not found.attention:
            found.reasons.append("the attention module's output cannot stand in for its forward")
    _CHECKED[model] = found
    return found


def _attention_first(model: nn.Module, layout, layer: int, run) -> bool:
    """True when, in block `layer`, the attention module's forward ends before any MLP matrix is used."""
    block = model.get_submodule(layout.blocks)[layer]
    attn = block.get_submodule(layout.attn_at(layer))
    mlp = [t.module for t in layout.per_layer[layer].get("mlp_in", layout.per_layer[layer].get("mlp_out")).matrices()] \
        if any(t in layout.per_layer[layer] for t in ("mlp_in", "mlp_out")) else []
    events: list[str] = []
    handles = [attn.register_forward_hook(lambda *_: events.append("attn"))]
    handles += [m.register_forward_pre_hook(lambda *_: events.append("mlp")) for m in {id(m): m for m in mlp}.values()]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return "attn" in events and ("mlp" not in events or events.index("attn") < events.index("mlp"))
