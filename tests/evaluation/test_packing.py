"""Requests sharing a prefix share one row: the trie's layout by hand, the packing rule, and every causal
architecture's packed scores against one sequence per request (float32 and bfloat16, sdpa and eager masks),
with a sliding window and through the search's prefix walk."""

from __future__ import annotations

import pytest
import torch

from laserlm import get_layout
from laserlm.core.edits import edited
from laserlm.core.svd import SVDCache
from laserlm.evaluation import packing
from laserlm.evaluation.evaluate import Prepared
from laserlm.evaluation.packing import collate, group, trie
from laserlm.evaluation.scoring import Scorer
from laserlm.evaluation.tasks import Example
from laserlm.sweep.store import ResultStore
from laserlm.sweep.sweeper import Sweeper, grid

from conftest import ARCHS, MLM, build_tiny, choice_rows, packed_prepared as _prepared, tiny_tokenizer

CAUSAL = [a for a in ARCHS if a not in MLM]


def test_the_trie_of_sorted_sequences_by_hand():
    tokens, depth, end, nodes = trie([[5, 6, 7], [5, 6, 8], [5, 9], [4]])
    # sorted: [4], [5,6,7], [5,6,8], [5,9] -> nodes 4 | 5 6 7 8 9, depth-first
    assert tokens == [4, 5, 6, 7, 8, 9]
    assert depth == [0, 0, 1, 2, 2, 1]
    assert end == [1, 6, 5, 4, 5, 6]
    assert nodes == [[1, 2, 3], [1, 2, 4], [1, 5], [0]]


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_each_token_sees_itself_and_its_ancestors_only(impl):
    batch = collate([[[5, 6, 7], [5, 6, 8], [5, 9]], [[3, 3]]], True, 0, "cpu")
    assert batch.ids.tolist() == [[5, 6, 7, 8, 9], [3, 3, 0, 0, 0]]
    assert batch.positions.tolist() == [[0, 1, 2, 2, 1], [0, 1, 0, 0, 0]]
    assert batch.rows == [0, 0, 0, 1] and batch.at(1, 2) == (0, 3) and batch.at(2, 1) == (0, 4)
    mask = batch.inputs(impl, torch.float32)["attention_mask"]
    sees = mask[:, 0] if impl == "sdpa" else mask[:, 0] == 0
    ancestors = {0: [0], 1: [0, 1], 2: [0, 1, 2], 3: [0, 1, 3], 4: [0, 4]}
    want = torch.zeros(2, 5, 5, dtype=torch.bool)
    for q, ks in ancestors.items():
        want[0, q, ks] = True
    want[1, 1, :2] = want[1, 0, 0] = True
    for pad in (2, 3, 4):  # a padding query sees itself: no row of the softmax is empty
        want[1, pad, pad] = True
    assert torch.equal(sees, want)
    if impl == "eager":
        assert mask.dtype == torch.float32 and mask.min().item() == torch.finfo(torch.float32).min


def test_sorted_requests_fill_packs_up_to_the_cap(monkeypatch):
    seqs = [[1, 2, 3, 4], [1, 2, 3, 5], [1, 9, 9, 9, 9], [7, 8], [1, 2, 6, 6]]
    # sorted: [1,2,3,4] [1,2,3,5] [1,2,6,6] [1,9,9,9,9] [7,8]: new tokens 4, 1, 2, 4, 2
    assert group(seqs, True) == [[0, 1, 4, 2, 3]]
    assert group(seqs, False) == [[0], [1], [2], [3], [4]]
    monkeypatch.setattr(packing, "PACK_NODES", 7)  # 4 + 1 + 2 fits; + 4 would make 11
    assert group(seqs, True) == [[0, 1, 4], [2, 3]]
    assert group(seqs, True, max_tokens=5) == [[0, 1], [4], [2], [3]]  # the batch budget caps a pack too
    assert group([[1] * 9, [1] * 9 + [2]], True, max_tokens=5) == [[0], [1]]  # too long: a pack of its own


def _scores(ev):
    return [s for r in ev.records for s in r["scores"]]


@pytest.mark.parametrize("arch", CAUSAL)
def test_packed_choices_score_as_one_sequence_per_choice(arch):
    model, tok = build_tiny(arch), tiny_tokenizer()
    rows = choice_rows(12)
    packed, plain = _prepared(model, tok, rows, True), _prepared(model, tok, rows, False)
    assert packed.scorer.trees  # every causal architecture of the table takes the tree mask
    n_rows = sum(len(batch) for batch in packed.batches)
    assert n_rows < len(rows) < len(packed.requests)  # choices share their prompt, rows their instruction
    a, b = packed.score(), plain.score()
    torch.testing.assert_close(torch.tensor(_scores(a)), torch.tensor(_scores(b)), atol=2e-5, rtol=0)
    assert [r["pred"] for r in a.records] == [r["pred"] for r in b.records]
    assert a.metrics["logloss"] == pytest.approx(b.metrics["logloss"], abs=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gemma2"])  # sdpa's boolean mask and eager's additive one
def test_packing_in_bfloat16_adds_no_error_beyond_bfloat16s_own(arch):
    model, tok = build_tiny(arch), tiny_tokenizer()
    rows = choice_rows(12)
    truth = torch.tensor(_scores(_prepared(model, tok, rows, False).score()), dtype=torch.float64)
    model = model.to(torch.bfloat16)
    packed = torch.tensor(_scores(_prepared(model, tok, rows, True).score()), dtype=torch.float64)
    plain = torch.tensor(_scores(_prepared(model, tok, rows, False).score()), dtype=torch.float64)
    own = (plain - truth).abs().max().item()
    assert 0 < own < 0.5
    assert (packed - truth).abs().max().item() <= 2 * own


def test_a_request_past_the_sliding_window_turns_packing_off():
    model, tok = build_tiny("gemma3_text"), tiny_tokenizer()  # sliding_window 16
    short = choice_rows(6)
    assert Scorer(model, tok).trees_for(_prepared(model, tok, short, True).requests)
    long = [Example(" ".join(["one two three four five six seven eight nine"] * 3), choices=[" ten", " one"], label=0)]
    prepared = _prepared(model, tok, short + long, True)
    assert not prepared.scorer.trees_for(prepared.requests)
    assert all(len(pack) == 1 for batch in prepared.batches for pack in batch)
    got = prepared.score().records[-1]["scores"]
    p = tok(long[0].prompt)["input_ids"]
    for c, score in zip(long[0].choices, got):  # the model's own forward applies the window
        cont = tok(c, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lp = model(torch.tensor([p + cont])).logits[0].float().log_softmax(-1)
        assert score == pytest.approx(lp[len(p) - 1, cont[0]].item(), abs=1e-5)


def test_masked_lms_are_never_packed():
    model, tok = build_tiny("roberta"), tiny_tokenizer(masked=True)
    prepared = Prepared(Scorer(model, tok), choice_rows(6))
    assert not prepared.scorer.trees
    assert all(len(pack) == 1 for batch in prepared.batches for pack in batch)


@pytest.mark.parametrize("arch", ["llama", "gptj"])
def test_the_search_prefix_walk_scores_packed_rows_as_plain_forwards(arch):
    model, tok = build_tiny(arch), tiny_tokenizer()
    layout = get_layout(model)
    rows = choice_rows(16, seed=1)
    prepared = _prepared(model, tok, rows, True, max_tokens=128)
    assert sum(len(b) for b in prepared.batches) < len(rows) and len(prepared.batches) > 1
    plain = _prepared(model, tok, rows, False)
    cands = grid(["mlp_in", "mlp_out", "attn_o"], [0, 2], [0.5], ["svd"])
    sweeper = Sweeper(model, layout, prepared, ResultStore(None), {"m": arch}, "val", SVDCache(disk=None))
    sweeper.sweep(cands)
    for c in [None] + cands:
        with edited(model, [c] if c else [], svd_cache=SVDCache(disk=None)):
            want = plain.score().metrics
        got = sweeper.done([c] if c else [])["metrics"]
        assert got["acc"] == want["acc"], c
        assert got["logloss"] == pytest.approx(want["logloss"], abs=1e-5), c
        assert got["choice_logloss"] == pytest.approx(want["choice_logloss"], abs=1e-5), c
