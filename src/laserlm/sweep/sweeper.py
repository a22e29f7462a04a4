"""The LASER sweep: every (type, layer, amount) on val, selection, greedy composition, test.

The cost of a candidate at layer l is one forward of blocks l..L over the val rows: the hidden states
entering l come from the prefix cache, built by walking the base model up the layers once; every
matrix's SVD is computed once and sliced for every amount; the LM head sees only scored positions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from ..core.layout import Layout
from ..core.edits import Edit, edited, plan
from ..evaluation.evaluate import Evaluation, Prepared
from ..evaluation.metrics import rank_key, row_values
from .objective import ObjectiveSplit
from .prefix import PrefixCache, check_replay
from .store import ResultStore, candidate_key, pack_rows
from ..core.svd import SVDCache

PAPER_RHOS = (0.9, 0.8, 0.6, 0.2, 0.1, 0.05, 0.01)


def grid(types: list[str], layers: Iterable[int], amounts: list, methods: list[str]) -> list[Edit]:
    """Candidates in layer order; `zero` and `mp` take no amount, so they appear once per matrix."""
    from ..core.methods import get_method

    out = []
    for layer in layers:
        for t in types:
            for m in methods:
                kind = get_method(m).amount
                for a in ([None] if kind == "none" else amounts):
                    if not (kind == "fraction" and isinstance(a, str)):  # prune takes no k=K
                        out.append(Edit(m, t, layer, a))
    return list(dict.fromkeys(out))


@dataclass
class Sweeper:
    """Evaluates edit candidates on one prepared row set, storing each result as soon as it exists."""

    model: torch.nn.Module
    layout: Layout
    prepared: Prepared | ObjectiveSplit  # anything whose score() gives the model's metrics as it is now
    store: ResultStore
    context: dict  # model identity, task, rows: what a result's key depends on
    split: str
    cache: SVDCache
    walk: tuple[int, list] | None = None  # (layer, states entering it): where the last sweep stopped
    per_row: bool = False  # store each example's values as lists (the test rows: paired intervals); else packed
    replay: object = None  # prefix.ReplayCheck, once a sweep has asked

    def key(self, edits: list[Edit]) -> str:
        return candidate_key(self.context, self.split, [e.to_json() for e in edits])

    def done(self, edits: list[Edit]) -> dict | None:
        return self.store.get(self.key(edits))

    def _record(self, edits: list[Edit], ev: Evaluation, secs: float) -> dict:
        row = {"key": self.key(edits), "edits": [e.to_json() for e in edits], "split": self.split,
               "n": ev.n, "metrics": ev.metrics, "seconds": round(secs, 3)}
        values = {m: row_values(ev.records, m) for m in ev.metrics}
        values = {m: v for m, v in values.items() if v is not None}
        if self.per_row:
            row["per_row"] = values
        elif values:  # every candidate's, packed: the selection statistics need them (sweep/pick.py)
            row["rows"] = {m: pack_rows(v) for m, v in values.items()}
        if (self.per_row or not edits) and any("group" in r for r in ev.records):
            # the paired statistics resample these together; the base row carries them for every candidate
            row["groups"] = [r.get("group", f"#{i}") for i, r in enumerate(ev.records)]
        self.store.append(row)
        return row

    def evaluate(self, edits: list[Edit], keep_kv: bool = False) -> dict:
        """One candidate (or stack) with a full forward; cached in the store. `keep_kv`: the pass is the unedited
        model's, and a generation's drafts keep its keys and values (for the blocks a walk's passes skip)."""
        if (row := self.done(edits)) is not None and (not self.per_row or "per_row" in row):
            return row
        t0 = time.perf_counter()
        with edited(self.model, edits, layout=self.layout, svd_cache=self.cache):
            ev = self.prepared.score(keep_kv=True) if keep_kv else self.prepared.score()
        return self._record(edits, ev, time.perf_counter() - t0)

    def sweep(self, candidates: list[Edit], on_done: Callable[[dict], None] | None = None, base: bool = True) -> None:
        """The base model and single-edit candidates, walking the layers upwards with the prefix cache.

        The base pass also records the states entering the lowest pending layer, so the walk up the
        layers starts from there without another forward.
        """
        pending = [c for c in candidates if self.done([c]) is None]
        for c in pending:  # every candidate is checked before any work
            plan(self.model, [c], self.layout, self.cache)
        replay = isinstance(self.prepared, Prepared) and self.prepared.scorer.fast
        self.replay = check_replay(self.model, self.layout) if replay else None
        if not replay or not self.replay.prefix:
            for edits in [[]] * base + [[c] for c in pending]:  # no known block list: correct, just slower
                row = self.evaluate(edits)
                on_done and edits and on_done(row)
            return
        prefix = PrefixCache(self.model, self.layout.blocks)
        by_layer: dict[int, list[Edit]] = {}
        for c in pending:
            by_layer.setdefault(c.layer, []).append(c)
        hidden: list[torch.Tensor] | None = None
        at = min(by_layer, default=0)
        if self.walk is not None and self.walk[0] <= at:  # continue from the last sweep's walk
            at, hidden = self.walk
        elif base and self.done([]) is None:
            with prefix.record(at) as states:
                self.evaluate([], keep_kv=True)
            hidden = states if by_layer else None
        collated = self.prepared.collated()
        if by_layer and self.prepared.drafts is not None:  # unless the base pass above kept them: a pass of its own
            self.prepared.drafts.record_base(self.prepared.scorer)
        for layer in sorted(by_layer):
            hidden = self._advance(prefix, collated, hidden, at, layer)
            at = layer
            attention = self._attention(prefix, collated, hidden, layer, by_layer[layer])
            for c in by_layer[layer]:
                reuse = attention if c.type.startswith("mlp_") else None

                def context(b, h=hidden, l=layer, a=reuse):
                    return prefix.replay(l, h[b], a and a[b], self.layout.attn_at(l))

                t0 = time.perf_counter()
                with edited(self.model, [c], layout=self.layout, svd_cache=self.cache):
                    ev = self.prepared.score(context=context)
                row = self._record([c], ev, time.perf_counter() - t0)
                on_done and on_done(row)
        self.walk = (at, hidden) if hidden is not None else None

    def _attention(self, prefix: PrefixCache, collated, hidden, layer: int, cands: list[Edit]) -> list | None:
        """Block `layer`'s attention output for every batch, when an MLP candidate there can reuse it."""
        attn = self.layout.attn_at(layer)
        if attn is None or not self.replay.attention or not any(c.type.startswith("mlp_") for c in cands):
            return None
        scorer = self.prepared.scorer
        return [prefix.capture_attention(layer, attn, h, lambda c=c: scorer.hidden(c))
                for c, h in zip(collated, hidden)]

    def _advance(self, prefix: PrefixCache, collated, hidden, at: int, layer: int) -> list[torch.Tensor]:
        """Hidden states entering `layer` for every batch: from scratch, or one block at a time."""
        scorer = self.prepared.scorer
        if hidden is None:
            return [prefix.capture(layer, lambda c=c: scorer.hidden(c)) for c in collated]
        for l in range(at, layer):
            nxt = []
            for c, h in zip(collated, hidden):
                def run(c=c, h=h, l=l):
                    with prefix.replay(l, h):
                        scorer.hidden(c)
                nxt.append(prefix.capture(l + 1, run))
            hidden = nxt
        return hidden


def best_row(rows: list[dict], primary: str, lower: bool | None = None) -> dict | None:
    """Best single-edit row by `primary` (losses minimised); ties broken by the other metrics, then by the
    edit's text, for determinism."""
    singles = [r for r in rows if len(r["edits"]) == 1]
    if not singles:
        return None
    return max(singles, key=lambda r: (*rank_key(r["metrics"], primary, lower), text_tiebreak(r["edits"][0])))


def text_tiebreak(edit: Edit | dict) -> tuple:
    """The last key of a full tie, for determinism: max() picks the largest key, so the text is inverted and
    "a" beats "b"."""
    edit = Edit.from_json(edit) if isinstance(edit, dict) else edit
    return tuple(-ord(ch) for ch in str(edit))


def compose(sweeper: Sweeper, rows: list[dict], base: dict, primary: str, log=None,
            lower: bool | None = None) -> tuple[list[Edit], dict]:
    """Greedy stacking (paper §5.1): each layer's best single edit, layers ordered by that edit's val
    gain, added when it improves val (the primary metric, ties broken by the others)."""
    by_layer: dict[int, list[dict]] = {}
    for r in rows:
        if len(r["edits"]) == 1:
            by_layer.setdefault(r["edits"][0]["layer"], []).append(r)
    per_layer = [best_row(group, primary, lower) for group in by_layer.values()]
    order = sorted(per_layer, key=lambda r: rank_key(r["metrics"], primary, lower), reverse=True)
    stack: list[Edit] = []
    current = base
    for r in order:
        trial = stack + [Edit.from_json(r["edits"][0])]
        row = r if not stack else sweeper.evaluate(trial)  # a one-edit stack is the row itself
        if rank_key(row["metrics"], primary, lower) > rank_key(current["metrics"], primary, lower):
            stack, current = trial, row
            log and log(f"compose: + {trial[-1]} -> {primary} {row['metrics'][primary]:.4f}")
    return stack, current

