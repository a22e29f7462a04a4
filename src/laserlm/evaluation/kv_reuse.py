"""Keys and values for the decoded tails of a generation, taken from passes that already computed them.

A row that leaves its draft at token j is decoded further by `generate()` from prompt + accepted tokens. Without
help, generate() first runs that whole prefix through every block again (its prefill), which on short prompts is
most of a tail's cost. But every key and value of that prefix has been computed already:
- the teacher-forced pass of this evaluation ran prompt + draft through every block it computed (for a search
  candidate at layer l: the blocks above l, and block l's attention for an attention edit);
- the blocks it did not compute are, by the prefix cache's contract, those whose inputs the edit does not change,
  and their keys and values are the unedited model's, which a search keeps from its base evaluation's pass (or
  records in a pass of their own) before it walks the layers.

`Recorder` is a KV cache that keeps nothing for attention (each layer attends over its own tokens, as without a
cache) but copies out the keys and values of the columns asked for: the real positions of the gen requests, in a
packed row or not (positions inside a packed trie carry their own depth, so their rotary keys are those of the row
alone). `tail_cache` lays a batch's prefixes out left-padded, as generate() wants them, so that generate() runs only
the last prefix token and the new ones.
"""

from __future__ import annotations

import copy
import inspect

import torch
from transformers import DynamicCache

from .fastpath import trunk

CPU_BUDGET = 2 << 30  # bytes of recorded keys and values per pass, past which a pass keeps none (tails prefill)
CUDA_SHARE = 8  # on a GPU: 1/CUDA_SHARE of its memory, and no more than a quarter of what is free


def cache_name(model) -> str:
    """The forward's keyword for a KV cache: transformers 5.2x names it `cache`, earlier ones `past_key_values`."""
    params = inspect.signature(type(trunk(model)).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def supported(model) -> bool:
    """Decoders whose layers keep plain keys and values: full attention, or a sliding window (which `window`
    bounds); no layer that shares another's keys or chunks its attention."""
    config = model.config.get_text_config(decoder=True)
    types = set(getattr(config, "layer_types", None) or ["full_attention"])
    return types <= {"full_attention", "sliding_attention"} and not getattr(config, "num_kv_shared_layers", 0)


def window(model) -> int | None:
    """The tokens a sliding-window layer keeps, if the model has one: a tail whose prefix and new tokens fit in it
    sees what a full layer would, so its cache may be filled ahead; a longer one prefills as generate() does."""
    config = model.config.get_text_config(decoder=True)
    size = getattr(config, "sliding_window", None)
    used = getattr(config, "use_sliding_window", True) or "sliding_attention" in (getattr(config, "layer_types", None)
                                                                                 or [])
    return size if size and used else None


def budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return min(total // CUDA_SHARE, free // 4)
    return CPU_BUDGET


class Recorder(DynamicCache):
    """A cache that hands every layer its own keys and values back and keeps the (row, column) pairs asked for."""

    def __init__(self, config, rows: torch.Tensor, cols: torch.Tensor, spans: list[tuple[int, int, int]], room: int):
        super().__init__(config=config)
        self.rows, self.cols, self.room = rows, cols, room
        self.spans = spans  # (draft row, first of its pairs, how many)
        self.seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if self.rows.device != key_states.device:  # a device map: this block sits elsewhere
            self.rows, self.cols = self.rows.to(key_states.device), self.cols.to(key_states.device)
        k, v = key_states[self.rows, :, self.cols], value_states[self.rows, :, self.cols]  # (n, heads, head_dim)
        self.room -= 2 * k.numel() * k.element_size()
        if self.room >= 0:
            self.seen[layer_idx] = (k, v)
        return key_states, value_states


class PassKV:
    """The keys and values one pass computed for the gen requests, per draft row and layer: (positions, heads, dim)."""

    def __init__(self, model, rows_of: dict[int, int]):
        self.config, self.rows_of = model.config, rows_of  # request index -> draft row
        self.room = budget(next(model.parameters()).device)
        self.kv: dict[int, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
        self.whole = True  # False once the budget ran out: nothing recorded counts

    def recorder(self, inputs, flat: list[int], reqs) -> Recorder | None:
        """A cache for one batch's forward (request indices `flat`), or None when it holds no gen request."""
        spans, rows, cols = [], [], []
        for j, (i, req) in enumerate(zip(flat, reqs)):
            if i in self.rows_of and self.whole:
                spans.append((self.rows_of[i], len(rows), len(req.ids)))
                for p in range(len(req.ids)):
                    r, c = inputs.at(j, p)
                    rows.append(r)
                    cols.append(c)
        if not spans:
            return None
        device = inputs.ids.device
        return Recorder(self.config, torch.tensor(rows, device=device), torch.tensor(cols, device=device), spans,
                        self.room)

    def keep(self, rec: Recorder | None) -> None:
        if rec is None:
            return
        self.room = rec.room
        if rec.room < 0:
            self.whole, self.kv = False, {}
            return
        for row, start, n in rec.spans:
            self.kv[row] = {l: (k[start:start + n], v[start:start + n]) for l, (k, v) in rec.seen.items()}

    def head(self, n: int) -> "PassKV":
        """The first n draft rows' keys and values (halving's smaller row sets), recording nothing more."""
        out = copy.copy(self)
        out.rows_of, out.kv = {}, {r: kv for r, kv in self.kv.items() if r < n}
        return out


def prefix_kv(row: int, length: int, layers: int, *passes: PassKV | None) -> list[tuple] | None:
    """Keys and values of a draft row's first `length` positions at every layer, each layer from the first pass
    that computed it; None when some layer is in none of them."""
    out = []
    for layer in range(layers):
        kv = next((p.kv[row][layer] for p in passes if p is not None and p.whole and layer in p.kv.get(row, {})), None)
        if kv is None or kv[0].shape[0] < length:
            return None
        out.append((kv[0][:length], kv[1][:length]))
    return out


def tail_cache(model, kvs: list[list[tuple]], width: int) -> DynamicCache:
    """A cache for a batch of left-padded prefixes `width` tokens wide: each row's keys and values of all but its
    last token, right-aligned (the padding columns are masked by the attention mask)."""
    batch, out = len(kvs), []
    for layer in range(len(kvs[0])):
        k0 = kvs[0][layer][0]
        keys = k0.new_zeros((batch, k0.shape[1], width - 1, k0.shape[2]))
        values = keys.clone()
        for b, row in enumerate(kvs):
            k, v = row[layer]
            n = k.shape[0]
            keys[b, :, width - 1 - n:] = k.transpose(0, 1)
            values[b, :, width - 1 - n:] = v.transpose(0, 1)
        out.append((keys, values))
    return DynamicCache(ddp_cache_data=out, config=model.config)
