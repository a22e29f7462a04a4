"""Batched scoring: continuation log-likelihoods and next-token top-k, through the LM head only where needed.

A request is one token sequence plus the (position, token) pairs whose log-probabilities we want and,
for cloze rows, one position whose top-k we want. Requests are sorted by length and packed into
right-padded batches under a token budget. The base model produces hidden states; only the gathered
positions go through the LM head and the softmax.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.architectures import ARCHITECTURES
from ..errors import UserError

TOPK = 10
PACK_RATIO = 0.85
HEAD_ROWS = 1024  # rows gathered before a head pass: bounds the logits held to 1024 x vocab


@dataclass
class Request:
    ids: list[int]
    targets: list[tuple[int, int]]  # (position whose logits score the token, token id)
    topk_pos: int | None = None
    key: tuple = ()  # (example position, role, sub-index), for the caller


@dataclass
class Result:
    logprobs: list[float] = field(default_factory=list)  # one per target
    top: list[int] = field(default_factory=list)  # top-k token ids at topk_pos, best first


def is_masked_lm(model: nn.Module) -> bool:
    return type(model).__name__.endswith("ForMaskedLM")


class Scorer:
    """Scores requests with `model`. `fast` uses base model + head at gathered positions; it is on for
    every architecture in the table (tests check it equals the full forward), off otherwise."""

    def __init__(self, model: nn.Module, tokenizer, batch_size: int | None = None, max_tokens: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.batch_size = batch_size
        self.max_tokens = max_tokens or (65536 if self.device.type == "cuda" else 8192)
        self.mlm = is_masked_lm(model)
        self.fast = getattr(model.config, "model_type", None) in ARCHITECTURES
        self.pad_id = tokenizer.pad_token_id if tokenizer is not None and tokenizer.pad_token_id is not None else 0

    # -- batching -------------------------------------------------------------------------------
    def batches(self, requests: list[Request]) -> list[list[int]]:
        """Indices of requests, longest first, packed under the token budget (and batch size).

        A new batch also starts when a row is shorter than PACK_RATIO of the batch's width, so padding
        never costs more than ~15% of the compute.
        """
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i].ids))
        out, cur, width = [], [], 0
        for i in order:
            n = len(requests[i].ids)
            if cur and ((len(cur) + 1) * width > self.max_tokens or n < PACK_RATIO * width
                        or (self.batch_size is not None and len(cur) >= self.batch_size)):
                out.append(cur)
                cur = []
            if not cur:
                width = n
            cur.append(i)
        if cur:
            out.append(cur)
        return out

    def collate(self, reqs: list[Request]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r.ids) for r in reqs)
        ids = torch.full((len(reqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(reqs), width), dtype=torch.long)
        for row, r in enumerate(reqs):
            ids[row, : len(r.ids)] = torch.tensor(r.ids)
            mask[row, : len(r.ids)] = 1
        return ids.to(self.device), mask.to(self.device)

    # -- model ----------------------------------------------------------------------------------
    def hidden(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state

    def head(self, h: torch.Tensor) -> torch.Tensor:
        model = self.model
        if self.mlm:
            module = getattr(model, "lm_head", None) or getattr(model, "cls")
        else:
            module = model.get_output_embeddings()
        logits = module(h)
        cap = getattr(model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    # -- scoring --------------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, requests: list[Request], progress=None, batches: list[list[int]] | None = None,
            context=None) -> list[Result]:
        """Score every request. `batches` fixes the packing; `context(b)` wraps batch b's forward.

        The hidden states at scored positions of all batches are gathered first and go through the
        head together: at a few dozen rows per batch the head is bound by streaming its vocab x d
        weight, so one pass over all rows costs about what one batch's pass would.
        """
        pending: list[tuple[list[int], list[Request], dict]] = []
        gathered: list[torch.Tensor] = []
        results: list[Result | None] = [None] * len(requests)

        def flush():
            flat = torch.cat(gathered)
            logits = self.head(flat).float() if self.fast else flat
            logp = torch.log_softmax(logits, dim=-1)
            offset = 0
            for batch, reqs, where in pending:
                self._collect(batch, reqs, where, logp[offset:offset + len(where)], results)
                offset += len(where)
            pending.clear()
            gathered.clear()

        for b, batch in enumerate(batches if batches is not None else self.batches(requests)):
            reqs = [requests[i] for i in batch]
            ids, mask = self.collate(reqs)
            # Each distinct (row, position) is scored once: a cloze row's top-k position is also
            # where its first answer token is scored.
            where: dict[tuple[int, int], int] = {}
            for row, r in enumerate(reqs):
                for pos in [p for p, _ in r.targets] + ([r.topk_pos] if r.topk_pos is not None else []):
                    where.setdefault((row, pos), len(where))
            rows = torch.tensor([rp[0] for rp in where], device=self.device)
            cols = torch.tensor([rp[1] for rp in where], device=self.device)
            with context(b) if context is not None else nullcontext():
                if self.fast:
                    gathered.append(self.hidden(ids, mask)[rows, cols])
                else:
                    gathered.append(self.model(input_ids=ids, attention_mask=mask).logits[rows, cols].float())
            pending.append((batch, reqs, where))
            if sum(len(g) for g in gathered) >= HEAD_ROWS:
                flush()
            if progress is not None:
                progress(len(batch))
        if pending:
            flush()
        return results  # type: ignore[return-value]

    @staticmethod
    def _collect(batch, reqs, where, logp, results) -> None:
        top_rows = [where[(row, r.topk_pos)] for row, r in enumerate(reqs) if r.topk_pos is not None]
        tops = logp[top_rows].topk(min(TOPK, logp.shape[-1])).indices.tolist() if top_rows else []
        tok_rows = [where[(row, p)] for row, r in enumerate(reqs) for p, _ in r.targets]
        tok_ids = [t for r in reqs for _, t in r.targets]
        picked = logp[tok_rows, tok_ids].tolist() if tok_rows else []
        k = t = 0
        for i, r in zip(batch, reqs):
            res = Result(logprobs=picked[k:k + len(r.targets)])
            k += len(r.targets)
            if r.topk_pos is not None:
                res.top = tops[t]
                t += 1
            results[i] = res


# -- encoding ---------------------------------------------------------------------------------------
def encode_prompt(tokenizer, prompt: str) -> list[int]:
    ids = tokenizer(prompt)["input_ids"]
    if not ids:
        raise UserError(f"prompt {prompt[:40]!r} encodes to no tokens")
    return ids


def encode_continuation(tokenizer, text: str) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise UserError(f"continuation {text!r} encodes to no tokens")
    return ids


def causal_request(prompt_ids: list[int], cont_ids: list[int], topk: bool, key: tuple, max_len: int | None) -> Request:
    """Teacher forcing: the token at position p+j is scored by the logits at position p+j-1."""
    if max_len is not None and len(prompt_ids) + len(cont_ids) > max_len:
        prompt_ids = prompt_ids[len(prompt_ids) + len(cont_ids) - max_len:]  # keep the prompt's end
    p = len(prompt_ids)
    targets = [(p - 1 + j, t) for j, t in enumerate(cont_ids)]
    # The last continuation token is only ever a target: no position after it needs scoring.
    return Request(prompt_ids + cont_ids[:-1], targets, p - 1 if topk else None, key)


def masked_request(tokenizer, prompt_ids: list[int], cont_ids: list[int], topk: bool, key: tuple) -> Request:
    """Masked LMs predict the continuation at mask tokens placed where it would go (before [SEP]/</s>)."""
    special = tokenizer.get_special_tokens_mask(prompt_ids, already_has_special_tokens=True)
    tail = 0
    while tail < len(special) and special[len(special) - 1 - tail]:
        tail += 1
    cut = len(prompt_ids) - tail
    ids = prompt_ids[:cut] + [tokenizer.mask_token_id] * len(cont_ids) + prompt_ids[cut:]
    targets = [(cut + j, t) for j, t in enumerate(cont_ids)]
    return Request(ids, targets, cut if topk else None, key)


def max_positions(model: nn.Module) -> int | None:
    config = model.config
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
