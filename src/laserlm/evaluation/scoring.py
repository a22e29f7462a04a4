"""Batched scoring: continuation log-likelihoods and next-token top-k, through the LM head only where needed.

A request is one token sequence plus the (position, token) pairs whose log-probabilities we want and,
for cloze rows, one position whose top-k we want. Requests that share a prefix (the choices of one prompt)
share one row (packing.py); rows are sorted by length and batched, right-padded, under a token budget. The
base model produces hidden states; only the gathered positions go through the LM head and the softmax.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import UserError
from .fastpath import close, fast_path, no_cache, probe_ids, trunk
from .greedy import Greedy
from .kv_reuse import cache_name
from .packing import TREE_ATTENTION, Collated, batch_packs, collate, group, trie

TOPK = 10
HEAD_ROWS = 1024  # rows per head pass at most: the float32 logits held at once are rows x vocab (x2 with log_softmax)
HEAD_BYTES = 256 << 20  # and at most this many bytes of them: a 151,936-token vocabulary gets 220 rows a pass


def head_module(model: nn.Module) -> nn.Module:
    """The model's head: the top-level child that holds its output embedding (RoBERTa's `lm_head`, BERT's `cls`,
    with their transform), or the output embedding itself."""
    out = model.get_output_embeddings()
    for name, module in model.named_modules():
        if module is out and name:
            top = name.split(".")[0]
            child = model.get_submodule(top)
            return child if child is not trunk(model) else out
    return out


def head_rows(model: nn.Module) -> int:
    """Rows per head pass: HEAD_ROWS, fewer for a large vocabulary, so memory does not grow with it."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    vocab = getattr(head, "out_features", None) or getattr(getattr(model, "config", None), "vocab_size", None) or 1
    return max(min(16, HEAD_ROWS), min(HEAD_ROWS, HEAD_BYTES // (8 * vocab)))


@dataclass
class Request:
    ids: list[int]
    targets: list[tuple[int, int]]  # (position whose logits score the token, token id)
    topk_pos: int | None = None
    key: tuple = ()  # (example position, role, sub-index), for the caller
    argmax: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)  # (position, token ids barred there)
    # The token expected at each argmax position (a generation's draft): the picks stop at the first position whose
    # greedy token differs from it or leads by less than `tolerance`, since nothing after it is used.
    expect: list[int] | None = None


@dataclass
class Result:
    logprobs: list[float] = field(default_factory=list)  # one per target
    top: list[int] = field(default_factory=list)  # top-k token ids at topk_pos, best first
    argmax: list[int] = field(default_factory=list)  # the greedy token at each argmax position (up to a stop)
    margins: list[tuple[float, float]] = field(default_factory=list)  # (its logit, its lead over the runner-up)


def is_masked_lm(model: nn.Module) -> bool:
    return type(model).__name__.endswith("ForMaskedLM")


class Scorer:
    """Scores requests with `model`. `fast`: the base model's hidden states go through the head only at gathered
    positions; `trees`: requests sharing a prefix share a row. Both are checked on the model itself
    (fastpath.py), for any architecture; where a check fails the scorer takes the model's own forward for that
    part, its head still applied only at the gathered positions, and `fast_reasons` says why."""

    def __init__(self, model: nn.Module, tokenizer, batch_size: int | None = None, max_tokens: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.batch_size = batch_size
        self.max_tokens = max_tokens or (65536 if self.device.type == "cuda" else 8192)
        self.mlm = is_masked_lm(model)
        self.pad_id = tokenizer.pad_token_id if tokenizer is not None and tokenizer.pad_token_id is not None else 0
        self.tree_capable = (not self.mlm
                             and getattr(model.config, "_attn_implementation", None) in TREE_ATTENTION)
        self.fast, self.trees = False, False
        self.head_rows = head_rows(model)
        self.head_module = head_module(model)  # found once: the head runs once per gathered chunk
        checked = fast_path(self)
        self.fast, self.trees, self.head_check = checked.head.exact, checked.packing, checked.head
        self.fast_reasons = checked.reasons

    # -- batching -------------------------------------------------------------------------------
    def trees_for(self, requests: list[Request]) -> bool:
        """Whether requests may share prefixes (packing.py): causal models of the table, with an attention that
        takes a 4-D mask, and no request past a sliding window (which a custom mask would not apply)."""
        window = getattr(self.model.config, "sliding_window", None)
        return (self.trees and bool(requests)
                and (not window or max(len(r.ids) for r in requests) <= window))

    def batches(self, requests: list[Request]) -> list[list[list[int]]]:
        """Batches of packs of request indices (a pack is one row: one request, or several sharing a prefix)."""
        trees = self.trees_for(requests)
        packs = group([r.ids for r in requests], trees, self.max_tokens)
        lengths = [len(trie([requests[i].ids for i in pack])[0]) if trees else len(requests[pack[0]].ids)
                   for pack in packs]
        return [[packs[k] for k in batch] for batch in batch_packs(lengths, self.max_tokens, self.batch_size)]

    @torch.inference_mode()
    def packing_reason(self) -> str | None:
        """None when two requests sharing a prefix, packed in one row, score as they do one per row; else why not."""
        ids = probe_ids(self.model, batch=1, length=16)[0].tolist()
        shared, tails = ids[:8], (ids[8:12], ids[12:])
        requests = [Request(shared + t, [(p, x) for p, x in enumerate((shared + t)[1:])]) for t in tails]
        packed, alone = self.run(requests, batches=[[[0, 1]]]), self.run(requests, batches=[[[0]], [[1]]])
        dtype = next(self.model.parameters()).dtype
        if all(close(torch.tensor(y.logprobs), torch.tensor(x.logprobs), dtype) for x, y in zip(packed, alone)):
            return None
        return ("requests sharing a prefix cannot share a row: a layer does not honour the 4-D attention mask and "
                "positions (ALiBi from a 2-D mask, a recurrent or state-space layer)")

    def collate(self, packs: list[list[Request]]) -> Collated:
        """One batch as model inputs: one row per pack, laid out as a trie when any pack holds several requests."""
        trees = any(len(p) > 1 for p in packs)
        return collate([[r.ids for r in pack] for pack in packs], trees, self.pad_id, self.device)

    # -- model ----------------------------------------------------------------------------------
    def _inputs(self, batch: Collated) -> dict:
        # The dtype is read now: an additive mask must match the weights as they are (a model cast after load).
        return batch.inputs(self.model.config._attn_implementation, next(self.model.parameters()).dtype)

    def hidden(self, batch: Collated, recorder=None) -> torch.Tensor:
        # use_cache=False: scoring never decodes, and a KV cache would hold K and V of every layer. A recorder
        # (kv_reuse.py) keeps only the generation rows' keys and values, for the tails decoded after the pass.
        cache = no_cache(self.model) if recorder is None else {cache_name(self.model): recorder, "use_cache": True}
        return trunk(self.model)(**self._inputs(batch), **cache).last_hidden_state

    def hidden_of(self, ids: torch.Tensor) -> torch.Tensor:
        return trunk(self.model)(input_ids=ids, **no_cache(self.model)).last_hidden_state

    def gathered_logits(self, batch: Collated, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """The model's own forward, its output embedding fed only the hidden states at (rows, cols): exact for
        any elementwise map the model applies after it, and logits of len(rows) positions, not of the batch."""
        head = self.model.get_output_embeddings() if not self.mlm else None

        def gather(_module, args):
            return (args[0][rows, cols].unsqueeze(0),)

        handle = head.register_forward_pre_hook(gather) if head is not None else None
        try:
            logits = self.model(**self._inputs(batch), **no_cache(self.model)).logits
        finally:
            if handle is not None:
                handle.remove()
        if handle is not None and logits.dim() == 3 and logits.shape[:2] == (1, len(rows)):
            return logits[0].float()
        return logits[rows, cols].float()

    def full_logits(self, batch: Collated) -> torch.Tensor:
        return self.model(**self._inputs(batch), **no_cache(self.model)).logits

    def raw_head(self, h: torch.Tensor) -> torch.Tensor:
        return self.head_module(h)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.head_check.apply(self.raw_head(h))

    # -- scoring --------------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, requests: list[Request], progress=None, batches: list[list[list[int]]] | None = None,
            context=None, collated: list[Collated] | None = None, kv=None) -> list[Result]:
        """Score every request. `batches` fixes the packing, `collated` gives those batches already laid out as
        model inputs; `context(b)` wraps batch b's forward; `kv` (a kv_reuse.PassKV) records the keys and values
        of the generation requests.

        The hidden states at scored positions of all batches are gathered first and go through the
        head together: at a few dozen rows per batch the head is bound by streaming its vocab x d
        weight, so one pass over all rows costs about what one batch's pass would.
        """
        pending: list[tuple[list[int], list[Request], list[list[int]], list[int | None], int]] = []
        gathered: list[torch.Tensor] = []
        results: list[Result | None] = [None] * len(requests)

        def flush():
            self._score_gathered(torch.cat(gathered), pending, results)
            pending.clear()
            gathered.clear()

        for b, batch in enumerate(batches if batches is not None else self.batches(requests)):
            flat = [i for pack in batch for i in pack]
            reqs = [requests[i] for i in flat]
            inputs = collated[b] if collated is not None else self.collate([[requests[i] for i in pack]
                                                                             for pack in batch])
            # Each distinct (row, column) is scored once: a cloze row's top-k position is also where its first
            # answer token is scored, and the choices packed after one prompt are all scored at its end.
            where: dict[tuple[int, int], int] = {}
            targets = [[where.setdefault(inputs.at(j, p), len(where)) for p, _ in r.targets]
                       for j, r in enumerate(reqs)]
            tops = [None if r.topk_pos is None else where.setdefault(inputs.at(j, r.topk_pos), len(where))
                    for j, r in enumerate(reqs)]
            argmaxes = [[where.setdefault(inputs.at(j, p), len(where)) for p, _ in r.argmax] for j, r in enumerate(reqs)]
            # long even when empty: a batch may ask for nothing (a pass run only for the keys it records)
            rows = torch.tensor([rc[0] for rc in where], dtype=torch.long, device=self.device)
            cols = torch.tensor([rc[1] for rc in where], dtype=torch.long, device=self.device)
            recorder = kv.recorder(inputs, flat, reqs) if kv is not None and self.fast else None
            with context(b) if context is not None else nullcontext():
                if self.fast:
                    gathered.append(self.hidden(inputs, recorder)[rows, cols])
                else:
                    gathered.append(self.gathered_logits(inputs, rows, cols))
            if kv is not None:
                kv.keep(recorder)
            pending.append((flat, reqs, targets, tops, argmaxes, len(where)))
            if sum(len(g) for g in gathered) >= self.head_rows:
                flush()
            if progress is not None:
                progress(len(flat))
        if pending:
            flush()
        return results  # type: ignore[return-value]

    def _score_gathered(self, flat: torch.Tensor, pending, results) -> None:
        """Head, log-softmax and picks over the gathered rows, HEAD_ROWS at a time: one batch of short rows
        can gather thousands of positions, and their logits over a large vocabulary would not fit."""
        tok_rows, tok_ids, top_rows = [], [], []
        greedy = Greedy()
        offset = 0
        for _flat, reqs, targets, tops, argmaxes, n in pending:
            for r, where, top, args in zip(reqs, targets, tops, argmaxes):
                tok_rows += [offset + w for w in where]
                tok_ids += [t for _, t in r.targets]
                if top is not None:
                    top_rows.append(offset + top)
                greedy.add([offset + w for w in args], [bar for _, bar in r.argmax], r.expect)
            offset += n
        tok_rows_t = torch.tensor(tok_rows, dtype=torch.long)
        tok_ids_t = torch.tensor(tok_ids, dtype=torch.long)
        top_rows_t = torch.tensor(top_rows, dtype=torch.long)
        picked = torch.empty(len(tok_rows), dtype=torch.float32)
        tops_t = torch.empty((len(top_rows), 0), dtype=torch.long)
        # The head runs where a log-probability or a top-k is asked; greedy picks (most rows of a generation
        # metric's pass) get head passes of their own, position by position along each draft.
        scored = torch.unique(torch.cat([tok_rows_t, top_rows_t]))
        for start in range(0, len(scored), self.head_rows):
            rows_here = scored[start:start + self.head_rows]
            logp = torch.log_softmax(self._logits(flat, rows_here), dim=-1)
            at = torch.full((len(flat),), -1, dtype=torch.long)
            at[rows_here] = torch.arange(len(rows_here))
            tok_sel, top_sel = at[tok_rows_t] >= 0, at[top_rows_t] >= 0
            if tok_sel.any():
                idx = at[tok_rows_t[tok_sel]].to(logp.device)
                picked[tok_sel] = logp[idx, tok_ids_t[tok_sel].to(logp.device)].cpu()
            if top_sel.any():
                idx = at[top_rows_t[top_sel]].to(logp.device)
                top = logp[idx].topk(min(TOPK, logp.shape[-1])).indices.cpu()
                if tops_t.shape[1] == 0:
                    tops_t = torch.empty((len(top_rows), top.shape[1]), dtype=torch.long)
                tops_t[top_sel] = top
        greedy.run(lambda rows: self._logits(flat, rows), next(self.model.parameters()).dtype, self.head_rows)
        picked_l, tops_l = picked.tolist(), tops_t.tolist()
        k = t = g = 0
        for flat_idx, reqs, *_ in pending:
            for i, r in zip(flat_idx, reqs):
                res = Result(logprobs=picked_l[k:k + len(r.targets)])
                k += len(r.targets)
                if r.topk_pos is not None:
                    res.top = tops_l[t]
                    t += 1
                res.argmax, res.margins = greedy.picks(g)
                g += 1
                results[i] = res

    def _logits(self, flat: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """float32 logits at gathered rows (`flat` holds hidden states, or the logits themselves when not fast)."""
        picked = flat[rows.to(flat.device)]
        return self.head(picked).float() if self.fast else picked.float()


# -- encoding ---------------------------------------------------------------------------------------
def encode_prompt(tokenizer, prompt: str) -> list[int]:
    ids = tokenizer(prompt)["input_ids"]
    if not ids:
        raise UserError(f"prompt {prompt[:40]!r} encodes to no tokens")
    return ids


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation encoded together, as lm-evaluation-harness does: whitespace at the end of the
    context moves to the start of the continuation, `tokenizer(context + continuation)` is encoded once, and
    the continuation is the tail after the context's own tokens. So a SentencePiece tokenizer that prepends
    "▁" to a text encoded alone never gives a continuation starting with a bare "▁".
    """
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer(context + continuation)["input_ids"]
    ctx = encode_prompt(tokenizer, context)
    # A tokenizer that appends special tokens (an EOS) puts them after the continuation as well.
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    n_tail = _leading([t in special for t in reversed(ctx)], len(ctx) - 1)
    if n_tail and whole[-n_tail:] == ctx[-n_tail:]:
        ctx, whole = ctx[:-n_tail], whole[:-n_tail]
    cont = whole[len(ctx):]
    if not cont:  # the continuation merged into the context's last token: score it on its own
        cont = encode_continuation(tokenizer, continuation)
    return ctx, cont


def encode_continuation(tokenizer, text: str) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise UserError(f"continuation {text!r} encodes to no tokens")
    return ids


def causal_request(prompt_ids: list[int], cont_ids: list[int], topk: bool, key: tuple, max_len: int | None) -> Request:
    """Teacher forcing: the token at position p+j is scored by the logits at position p+j-1.

    Past the model's context, the prompt loses its start; a continuation that alone fills the context
    keeps at least one prompt token and is scored on its first max_len - 1 tokens.
    """
    if max_len is not None and len(prompt_ids) + len(cont_ids) > max_len:
        cont_ids = cont_ids[:max_len - 1]
        prompt_ids = prompt_ids[len(prompt_ids) + len(cont_ids) - max_len:]  # keep the prompt's end
    p = len(prompt_ids)
    targets = [(p - 1 + j, t) for j, t in enumerate(cont_ids)]
    # The last continuation token is only ever a target: no position after it needs scoring.
    return Request(prompt_ids + cont_ids[:-1], targets, p - 1 if topk else None, key)


def _leading(special: list[int], limit: int) -> int:
    """How many of the first `limit` flags are set: the run of special tokens at a sequence's start (or, given
    the flags reversed, at its end), which a cut keeps."""
    n = 0
    while n < limit and special[n]:
        n += 1
    return n


def masked_request(tokenizer, prompt_ids: list[int], cont_ids: list[int], topk: bool, key: tuple,
                   max_len: int | None = None) -> Request:
    """Masked LMs predict the continuation at mask tokens placed where it would go (before [SEP]/</s>).

    Past `max_len` the prompt's text loses its start (its leading special tokens stay), as for causal
    LMs: an index past the position embeddings would be a device assert on CUDA.
    """
    special = tokenizer.get_special_tokens_mask(prompt_ids, already_has_special_tokens=True)
    tail = _leading(special[::-1], len(special))
    head = _leading(special, len(special) - tail)
    if max_len is not None and len(prompt_ids) + len(cont_ids) > max_len:
        cont_ids = cont_ids[:max(1, max_len - head - tail - 1)]
        drop = len(prompt_ids) + len(cont_ids) - max_len
        prompt_ids = prompt_ids[:head] + prompt_ids[head + drop:]
    cut = len(prompt_ids) - tail
    ids = prompt_ids[:cut] + [tokenizer.mask_token_id] * len(cont_ids) + prompt_ids[cut:]
    targets = [(cut + j, t) for j, t in enumerate(cont_ids)]
    return Request(ids, targets, cut if topk else None, key)


MASK = "<mask>"


def masked_at_request(tokenizer, template: str, cont_ids: list[int], topk: bool, key: tuple,
                      max_len: int | None = None, special: bool = True) -> Request:
    """A masked-LM request from a template with one "<mask>" (the authors' RoBERTa prompts): the mask
    becomes one mask token per continuation token. Past `max_len`, the text before the mask loses its start.
    `special=False` encodes the template without the tokenizer's special tokens."""
    ids = tokenizer(template.replace(MASK, tokenizer.mask_token), add_special_tokens=special)["input_ids"]
    at = ids.index(tokenizer.mask_token_id)
    if max_len is not None and len(ids) - 1 + len(cont_ids) > max_len:
        head = _leading(tokenizer.get_special_tokens_mask(ids, already_has_special_tokens=True), at)
        drop = min(len(ids) - 1 + len(cont_ids) - max_len, at - head)
        ids, at = ids[:head] + ids[head + drop:], at - drop
    ids = ids[:at] + [tokenizer.mask_token_id] * len(cont_ids) + ids[at + 1:]
    return Request(ids, [(at + j, t) for j, t in enumerate(cont_ids)], at if topk else None, key)


# RoBERTa-style position ids start after the padding index, so padding_idx + 1 positions are never usable.
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "roberta-prelayernorm", "xlm-roberta-xl"}


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence the model's position embeddings can index."""
    config = model.config
    n = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if n and getattr(config, "model_type", None) in _OFFSET_POSITIONS:
        n -= (getattr(config, "pad_token_id", None) or 0) + 1
    return n
