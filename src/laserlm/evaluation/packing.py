"""Batches of requests, and requests packed into shared rows so that a common prefix runs once.

Sorted by their token ids, requests that share a start sit next to each other: a choice row's prompt is
repeated by each of its choices, and rows of one task often share an instruction. Consecutive requests fill
a pack of up to PACK_NODES tokens as a token trie, laid out depth-first as one row: shared prefixes appear
once, and unrelated requests sit side by side. Each token attends to its ancestors in the trie only (a 4-D
mask) and sits at its depth (position ids), so every request sees exactly the tokens and positions it would
see alone, through the model's own forward.

Filling rows also evens their widths: short requests of varied lengths would otherwise make many small
batches, and on a CPU each forward costs about as much as a hundred tokens whatever its size. Attention over
a pack costs O(PACK_NODES) per token, little beside the projections' and MLP's O(d).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PACK_RATIO = 0.85
PACK_NODES = 512
TREE_ATTENTION = ("sdpa", "eager")  # implementations that take a custom 4-D mask as it is


def _shared(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def group(seqs: list[list[int]], trees: bool, max_tokens: int | None = None) -> list[list[int]]:
    """Indices of `seqs` in packs: one per sequence without `trees`, else runs of sequences sorted by their
    tokens (so a pack's trie is built in depth-first order), each pack's trie within PACK_NODES and the
    batch's token budget (a longer sequence is a pack of its own)."""
    if not trees:
        return [[i] for i in range(len(seqs))]
    order = sorted(range(len(seqs)), key=lambda i: seqs[i])
    cap = min(PACK_NODES, max_tokens or PACK_NODES)
    packs: list[list[int]] = []
    nodes = 0
    for i in order:
        s = _shared(seqs[packs[-1][-1]], seqs[i]) if packs else 0
        if packs and nodes + len(seqs[i]) - s <= cap:
            packs[-1].append(i)
            nodes += len(seqs[i]) - s
        else:
            packs.append([i])
            nodes = len(seqs[i])
    return packs


def trie(seqs: list[list[int]]) -> tuple[list[int], list[int], list[int], list[list[int]]]:
    """Tokens, depths and subtree ends of the trie of `seqs`, and each sequence's node indices. Inserted in
    sorted order, nodes come depth-first, so a node's subtree is the run from it to its end."""
    tokens: list[int] = []
    depth: list[int] = []
    parent: list[int] = []
    child: dict[tuple[int, int], int] = {}
    nodes_of: list[list[int]] = [[] for _ in seqs]
    for k in sorted(range(len(seqs)), key=lambda k: seqs[k]):
        node, path = -1, nodes_of[k]
        for t in seqs[k]:
            nxt = child.get((node, t))
            if nxt is None:
                nxt = child[(node, t)] = len(tokens)
                tokens.append(t)
                depth.append(len(path))
                parent.append(node)
            path.append(nxt)
            node = nxt
    end = list(range(1, len(tokens) + 1))
    for i in range(len(tokens) - 1, -1, -1):  # children come after their parent: one backward pass
        if parent[i] >= 0:
            end[parent[i]] = max(end[parent[i]], end[i])
    return tokens, depth, end, nodes_of


def batch_packs(lengths: list[int], max_tokens: int, batch_size: int | None) -> list[list[int]]:
    """Indices of packs, longest first, in batches under the token budget (and the batch size). A new batch
    also starts when a pack is shorter than PACK_RATIO of the batch's width, so padding never costs more
    than ~15% of the compute."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out, cur, width = [], [], 0
    for i in order:
        n = lengths[i]
        if cur and ((len(cur) + 1) * width > max_tokens or n < PACK_RATIO * width
                    or (batch_size is not None and len(cur) >= batch_size)):
            out.append(cur)
            cur = []
        if not cur:
            width = n
        cur.append(i)
    if cur:
        out.append(cur)
    return out


@dataclass
class Collated:
    """One batch as model inputs. Request j of the batch (packs flattened, in order) lies in row rows[j]; its
    position p is column cols[j][p] (p itself when cols is None: one request per row)."""

    ids: torch.Tensor  # (rows, width), right-padded
    mask: torch.Tensor  # (rows, width): 1 on tokens, 0 on padding
    rows: list[int]
    cols: list[list[int]] | None = None
    positions: torch.Tensor | None = None  # trees: each token's depth
    ends: torch.Tensor | None = None  # trees: where each token's subtree ends (padding: itself + 1)

    def at(self, j: int, pos: int) -> tuple[int, int]:
        return self.rows[j], pos if self.cols is None else self.cols[j][pos]

    def inputs(self, attn_implementation: str, dtype: torch.dtype) -> dict:
        """Keyword arguments of the model's forward. A tree's 4-D mask is built here, on the device, from the
        subtree ends: query q sees key k when k <= q < end[k], that is when k is q or one of its ancestors."""
        if self.ends is None:
            return {"input_ids": self.ids, "attention_mask": self.mask}
        ar = torch.arange(self.ids.shape[1], device=self.ids.device)
        sees = (ar[None, None, :] <= ar[None, :, None]) & (ar[None, :, None] < self.ends[:, None, :])
        if attn_implementation == "eager":  # an additive mask, as the eager attention adds it to the scores
            sees = torch.zeros(sees.shape, dtype=dtype, device=sees.device).masked_fill_(~sees, torch.finfo(dtype).min)
        return {"input_ids": self.ids, "attention_mask": sees[:, None], "position_ids": self.positions}


def collate(packs: list[list[list[int]]], trees: bool, pad_id: int, device) -> Collated:
    """A batch from packs of token sequences: with `trees`, one row per pack; else one row per sequence."""
    if not trees:
        seqs = [s for pack in packs for s in pack]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, : len(s)] = torch.tensor(s)
            mask[row, : len(s)] = 1
        return Collated(ids.to(device), mask.to(device), list(range(len(seqs))))
    laid = [trie(pack) for pack in packs]
    width = max(len(t[0]) for t in laid)
    ids = torch.full((len(packs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(packs), width), dtype=torch.long)
    positions = torch.zeros((len(packs), width), dtype=torch.long)
    ends = torch.arange(1, width + 1).repeat(len(packs), 1)
    rows, cols = [], []
    for row, (tokens, depth, end, nodes_of) in enumerate(laid):
        n = len(tokens)
        ids[row, :n] = torch.tensor(tokens)
        mask[row, :n] = 1
        positions[row, :n] = torch.tensor(depth)
        ends[row, :n] = torch.tensor(end)
        rows += [row] * len(nodes_of)
        cols += nodes_of
    return Collated(ids.to(device), mask.to(device), rows, cols, positions.to(device), ends.to(device))
