"""Generation metrics verify the prepared rows' draft generation instead of generating afresh: the generated ids
must be those of plain `model.generate()` (greedy, min_new_tokens), on every causal architecture and the demo,
through plain evaluation and through the search's prefix walk."""

from __future__ import annotations

import pytest
import torch

from laserlm import get_layout
from laserlm.core.edits import edited
from laserlm.core.svd import SVDCache
from laserlm.evaluation.evaluate import Prepared
from laserlm.evaluation.generation import GenSettings, unverifiable
from laserlm.evaluation.metrics import choose_metrics
from laserlm.evaluation.scoring import Scorer
from laserlm.evaluation.tasks import Example
from laserlm.sweep.store import ResultStore
from laserlm.sweep.sweeper import Sweeper, grid

from conftest import ARCHS, MLM, build_tiny, cloze_rows, needs_demo, plain_generate, tiny_tokenizer

CAUSAL = [a for a in ARCHS if a not in MLM]
GEN = choose_metrics("cloze", ["gen01", "gen01_paper", "top1"], False)


def _rows(n: int = 24, seed: int = 5) -> list[Example]:
    return [Example(r["prompt"], answers=[r["answer"]]) for r in cloze_rows(n, seed)]


@pytest.mark.parametrize("arch", CAUSAL)
def test_verified_drafts_give_plain_generate_ids_under_an_edit(arch):
    model, tok = build_tiny(arch), tiny_tokenizer()
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids("the")  # a common word ends some rows early
    settings = GenSettings(8, 1)
    rows = _rows()
    prepared = Prepared(Scorer(model, tok), rows, GEN, settings)  # drafts: the base model's generation
    assert [tuple(d) for d in prepared.drafts.ids] == [tuple(plain_generate(model, tok, r.prompt, settings))
                                                         for r in rows]
    for edit in (["mlp_in:1:0.1"], ["mlp:all:k=1", "attn_o:all:k=1"]):
        with edited(model, edit, svd_cache=SVDCache(disk=None)):
            got = prepared.score().records
            want = [plain_generate(model, tok, r.prompt, settings) for r in rows]
        assert [r["generation_ids"] for r in got] == want, edit
        assert [r["generation"] for r in got] == [tok.decode(w, skip_special_tokens=True) for w in want]
        assert prepared.drafts.last["confirmed"] + prepared.drafts.last["decoded"] == len(rows)
    # A wrong draft costs decoding, never correctness: every other row's draft goes astray after two tokens.
    for i in range(0, len(rows), 2):
        d = prepared.drafts.ids[i]
        prepared.drafts.ids[i] = d[:2] + [(t + 1) % 97 for t in d[2:]] if len(d) > 2 else [(d[0] + 1) % 97]
    with edited(model, ["mlp_in:1:0.1"], svd_cache=SVDCache(disk=None)):
        got = [r["generation_ids"] for r in prepared.score().records]
        assert got == [plain_generate(model, tok, r.prompt, settings) for r in rows]
    assert prepared.drafts.last["decoded"] >= len(rows) // 2


def test_eos_is_barred_before_min_new_tokens():
    model, tok = build_tiny("llama"), tiny_tokenizer()
    rows = _rows(12)
    first = [plain_generate(model, tok, r.prompt, GenSettings(1, 0))[0] for r in rows]
    model.generation_config.eos_token_id = first[0]  # row 0's greedy first token is now EOS
    for least in (0, 1):
        settings = GenSettings(4, least)
        got = Prepared(Scorer(model, tok), rows, GEN, settings).score().records[0]["generation_ids"]
        assert got == plain_generate(model, tok, rows[0].prompt, settings)
        assert (got == [first[0]]) == (least == 0)


def test_a_repetition_penalty_turns_verification_off_and_generate_decides():
    model, tok = build_tiny("llama"), tiny_tokenizer()
    model.generation_config.repetition_penalty = 1.3
    assert "repetition_penalty" in unverifiable(model)
    settings, rows = GenSettings(6, 1), _rows(8)
    prepared = Prepared(Scorer(model, tok), rows, GEN, settings)
    assert not any(q.key[1] == "gen" for q in prepared.requests)
    with edited(model, ["mlp_in:1:0.1"], svd_cache=SVDCache(disk=None)):
        got = [r["generation_ids"] for r in prepared.score().records]
        assert got == [plain_generate(model, tok, r.prompt, settings) for r in rows]


@pytest.mark.parametrize("arch", ["llama", "gptj"])
def test_the_prefix_walk_generates_what_plain_evaluation_does(arch):
    model, tok = build_tiny(arch), tiny_tokenizer()
    layout, cache = get_layout(model), SVDCache(disk=None)
    prepared = Prepared(Scorer(model, tok, max_tokens=96), _rows(30), GEN, GenSettings(6, 1))
    assert len(prepared.batches) > 1
    sweeper = Sweeper(model, layout, prepared, ResultStore(None), {"m": arch}, "val", cache)
    cands = grid(["mlp_in", "mlp_out", "attn_o"], [0, 2], [0.5, 0.1], ["svd"])
    sweeper.sweep(cands)
    plain = Prepared(Scorer(model, tok), _rows(30), GEN, GenSettings(6, 1))
    for c in [None] + cands:
        with edited(model, [c] if c else [], svd_cache=cache):
            want = plain.score().metrics
        got = sweeper.done([c] if c else [])["metrics"]
        assert got == pytest.approx(want, abs=1e-5), c


@needs_demo
def test_the_demo_generates_what_generate_does_under_an_edit():
    from laserlm import load_model
    from laserlm.evaluation.tasks import load_task

    loaded = load_model("demo", device="cpu")
    task = load_task("bb_wikidata")
    rows = task.select("val", 0, 40)
    settings = task.gen()
    assert settings == GenSettings(10, 1)
    scorer = Scorer(loaded.model, loaded.tokenizer)
    prepared = Prepared(scorer, rows, GEN, settings)
    with edited(loaded.model, ["mlp_in:28:0.01"]):
        got = [r["generation_ids"] for r in prepared.score().records]
        want = [plain_generate(loaded.model, loaded.tokenizer, r.prompt, settings) for r in rows]  # not ours
    assert got == want
    assert prepared.drafts.last["decoded"] > 0 and prepared.drafts.last["confirmed"] > 0


def test_greedy_picks_along_a_draft_stop_where_it_is_left():
    """Picks with expected tokens are made position by position and stop after the first one that leaves them:
    identical picks up to there, and the head runs on no later position."""
    from laserlm.evaluation.scoring import Request

    model, tok = build_tiny("llama"), tiny_tokenizer()
    scorer = Scorer(model, tok)
    ids = tok("[BOS] the cat sat on the mat and the dog")["input_ids"]
    asks = [(p, ()) for p in range(2, len(ids))]
    full = scorer.run([Request(ids, [], None, (0,), asks)])[0]
    assert len(full.argmax) == len(asks) and min(lead for _, lead in full.margins[:4]) > 1e-3
    followed = scorer.run([Request(ids, [], None, (0,), asks, expect=full.argmax)])[0]
    # A head pass over one row or nine rounds alike up to the last bits: the picks are equal, the margins within 1e-5.
    assert followed.argmax == full.argmax
    assert torch.allclose(torch.tensor(followed.margins), torch.tensor(full.margins), atol=1e-5)
    rows, head = [], scorer.head
    scorer.head = lambda h: rows.append(len(h)) or head(h)
    left = full.argmax[:3] + [(full.argmax[3] + 1) % 97] + full.argmax[4:]
    cut = scorer.run([Request(ids, [], None, (0,), asks, expect=left)])[0]
    assert cut.argmax == full.argmax[:4]
    assert torch.allclose(torch.tensor(cut.margins), torch.tensor(full.margins[:4]), atol=1e-5)
    assert sum(rows) == 4  # positions 0-3, one head pass each


def test_a_drafted_position_with_an_exact_tie_is_decoded_by_generate(monkeypatch):
    """Two identical rows of the head: wherever one of them is the greedy token, the other ties it exactly. A tie is
    within rounding of a flip, so that row is left to generate() from before the tie (never confirmed from the
    draft), and its ids still equal plain per-row generate()."""
    import laserlm.evaluation.generation as generation

    model, tok = build_tiny("llama"), tiny_tokenizer()
    settings = GenSettings(6, 1)
    rows = _rows(12)
    first = plain_generate(model, tok, rows[0].prompt, settings)[0]
    twin = 5 if first != 5 else 6  # another token, to tie with the first greedy one
    with torch.no_grad():
        model.lm_head.weight[twin] = model.lm_head.weight[first]
    prepared = Prepared(Scorer(model, tok), rows, GEN, settings)
    decoded, real = [], generation.generate_ids

    def spy(scorer, prefixes, *a, **k):
        decoded.extend(tuple(p) for p in prefixes)
        return real(scorer, prefixes, *a, **k)

    monkeypatch.setattr(generation, "generate_ids", spy)
    got = [r["generation_ids"] for r in prepared.score().records]
    assert got == [plain_generate(model, tok, r.prompt, settings) for r in rows]
    prompts = [tok(r.prompt)["input_ids"] for r in rows]
    tied = [i for i, g in enumerate(got) if first in g or twin in g]
    assert tied
    for i in tied:  # decoded by generate() from a prefix that stops at or before the tied token
        j = next(k for k, t in enumerate(got[i]) if t in (first, twin))
        assert any(p[:len(prompts[i])] == tuple(prompts[i]) and len(p) - len(prompts[i]) <= j for p in decoded), i
