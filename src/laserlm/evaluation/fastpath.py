"""Whether the scorer's shortcuts are exact for this model, checked on the model itself rather than assumed.

Two shortcuts live in the scorer:
- **head at gathered positions**: the base model's last hidden states go through the LM head only where a score is
  read. That equals the model's own logits when the head is the output embedding followed by at most an
  elementwise map; the map is found here (none, a scale such as Cohere's `logit_scale` or Granite's
  `logits_scaling`, or Gemma's soft-capping) and checked on a probe batch.
- **packing**: requests sharing a prefix share one row under a 4-D tree mask. That is exact only where every layer
  honours the mask and the positions given (not ALiBi built from the 2-D mask, not a recurrent or state-space
  layer); a packed probe is compared with the same requests run one per row.

A model that fails a check takes the plain path for that shortcut, exactly, and the reason is kept (`laser info`
prints it). The checks run once per model object, on a few dozen tokens.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

PROBE_TOKENS = 12


@dataclass
class HeadCheck:
    exact: bool
    transform: str = "none"  # "none", "scale", "softcap" or "scale+softcap"
    scale: float = 1.0
    softcap: float | None = None
    reason: str | None = None

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


@dataclass
class FastPath:
    """What the scorer may shortcut on this model, and why not where it may not."""

    head: HeadCheck
    packing: bool
    reasons: list[str] = field(default_factory=list)


_CHECKED: "weakref.WeakKeyDictionary[nn.Module, FastPath]" = weakref.WeakKeyDictionary()


def trunk(model: nn.Module) -> nn.Module:
    """The module that gives the last hidden states: `base_model`, unless that is the model itself (a class whose
    `base_model_prefix` names no attribute, as Llama-4's causal LM), then the decoder."""
    base = getattr(model, "base_model", model)
    if base is not model:
        return base
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if get_decoder is not None else None
    if isinstance(decoder, nn.Module) and decoder is not model:
        return decoder
    inner = getattr(model, "model", None)
    return inner if isinstance(inner, nn.Module) else model


def no_cache(model: nn.Module) -> dict:
    """`use_cache=False` for models that would otherwise build a KV cache in a plain forward."""
    return {"use_cache": False} if hasattr(getattr(model, "config", None), "use_cache") else {}


def close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> bool:
    """`b` equals the reference `a` up to the rounding of `dtype`, relative to a's largest magnitude."""
    scale = max(1.0, a.abs().max().item())
    return bool(torch.isfinite(a).all()) and (a - b).abs().max().item() <= tolerance(dtype) * scale


def tolerance(dtype: torch.dtype) -> float:
    return 2e-5 if dtype in (torch.float32, torch.float64) else 3e-2


def probe_ids(model: nn.Module, batch: int = 2, length: int = PROBE_TOKENS, seed: int = 0) -> torch.Tensor:
    config = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
    emb = model.get_input_embeddings()
    vocab = min(getattr(config, "vocab_size", None) or emb.num_embeddings, emb.num_embeddings)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(min(3, vocab - 1), vocab, (batch, length), generator=g)
    return ids.to(next(model.parameters()).device)


def _config_value(model: nn.Module, *names) -> float | None:
    config = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value:
            return float(value)
    return None


@torch.inference_mode()
def check_head(model: nn.Module, head, hidden) -> HeadCheck:
    """Compare `head(hidden(ids))` with `model(ids).logits`, trying the elementwise maps models apply after the
    output embedding. `head` and `hidden` are the scorer's own functions."""
    dtype = next(model.parameters()).dtype
    ids = probe_ids(model)
    try:
        full = model(input_ids=ids, **no_cache(model)).logits.float()
        raw = head(hidden(ids)).float()
    except Exception as e:  # noqa: BLE001 - any failure means: use the model's own forward
        return HeadCheck(False, reason=f"the base model's hidden states cannot be read apart from the head "
                                       f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})")
    if raw.shape != full.shape:
        return HeadCheck(False, reason=f"the output embedding gives {tuple(raw.shape)} where the model gives "
                                       f"{tuple(full.shape)}")
    # The maps the config declares come first: on small random logits a soft-cap is close to no map at all.
    softcap = _config_value(model, "final_logit_softcapping")
    declared = 1.0
    if (s := _config_value(model, "logit_scale")) is not None:
        declared = s
    elif (s := _config_value(model, "logits_scaling")) is not None:
        declared = 1.0 / s
    denom = (raw * raw).sum().item()
    fitted = (raw * full).sum().item() / denom if denom > 0 else 1.0  # a factor the config does not name
    for s, cap in [(declared, softcap), (declared, None), (1.0, None), (fitted, None), (fitted, softcap)]:
        check = HeadCheck(True, scale=s, softcap=cap)
        if math.isfinite(s) and close(full, check.apply(raw), dtype):
            names = (["scale"] if s != 1.0 else []) + (["softcap"] if cap else [])
            check.transform = "+".join(names) or "none"
            return check
    return HeadCheck(False, reason="the logits are not the output embedding of the last hidden states up to a "
                                   "scale or soft-cap")


def fast_path(scorer) -> FastPath:
    """The checks for `scorer.model`, run once per model object."""
    model = scorer.model
    found = _CHECKED.get(model)
    if found is not None:
        return found
    head = check_head(model, scorer.raw_head, scorer.hidden_of)
    found = FastPath(head, packing=False, reasons=[head.reason] if head.reason else [])
    scorer.fast, scorer.head_check = head.exact, head
    if scorer.tree_capable:
        scorer.trees = True  # so that the probe can pack
        found.packing = False
        try:
            reason = scorer.packing_reason()
        except Exception as e:  # noqa: BLE001 - a forward that cannot take a 4-D mask: one request a row
            reason = (f"requests sharing a prefix cannot share a row: the model's forward refuses a 4-D attention "
                      f"mask ({type(e).__name__})")
        found.packing = scorer.trees = reason is None
        if reason:
            found.reasons.append(reason)
    _CHECKED[model] = found
    return found
