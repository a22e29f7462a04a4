"""Memory bounds and edge cases of the scorer: no KV cache, head passes of at most HEAD_ROWS rows, sequences
that never index past the position embeddings."""

from __future__ import annotations

import pytest
import torch

import laserlm.evaluation.scoring as scoring
from laserlm.evaluation.evaluate import Prepared, evaluate
from laserlm.evaluation.scoring import Request, Scorer, causal_request, masked_request, max_positions
from laserlm.evaluation.tasks import Example

from conftest import ARCHS, MLM, build_tiny, tiny_tokenizer
from test_evaluate import CLOZE, hand_cloze


@pytest.mark.parametrize("arch", ARCHS)
def test_every_scoring_forward_builds_no_kv_cache(arch):
    model = build_tiny(arch)
    seen = []

    def hook(_m, _args, kwargs, out):
        seen.append((kwargs.get("use_cache"), getattr(out, "past_key_values", None)))

    handle = model.base_model.register_forward_hook(hook, with_kwargs=True)
    try:
        scorer = Scorer(model, tiny_tokenizer(masked=arch in MLM))
        evaluate(scorer, CLOZE[:3], None)
    finally:
        handle.remove()
    assert seen, "the base model never ran"
    for use_cache, past in seen:
        assert past is None
        if arch not in MLM:  # decoders would build a cache by default
            assert use_cache is False


def test_the_head_never_sees_more_than_head_rows(monkeypatch):
    model = build_tiny("llama")
    tok = tiny_tokenizer()
    rows = CLOZE * 4
    expected = [hand_cloze(model, tok, ex) for ex in rows]
    monkeypatch.setattr(scoring, "HEAD_ROWS", 3)
    sizes = []
    scorer = Scorer(model, tok, max_tokens=10_000)  # one batch gathers far more than 3 positions
    head = scorer.head
    monkeypatch.setattr(scorer, "head", lambda h: sizes.append(len(h)) or head(h))
    result = evaluate(scorer, rows, None)
    assert max(sizes) <= 3 and sum(sizes) > 3 * 3
    for rec, want in zip(result.records, expected):
        assert rec["top1"] == want["top1"] and rec["top10"] == want["top10"]
        assert rec["nll"] == pytest.approx(want["nll"], abs=1e-5)


def test_chunked_and_unchunked_scores_are_equal(monkeypatch):
    model = build_tiny("gpt2")
    tok = tiny_tokenizer()
    rows = CLOZE * 3
    whole = Prepared(Scorer(model, tok), rows).score().records
    monkeypatch.setattr(scoring, "HEAD_ROWS", 2)
    chunked = Prepared(Scorer(model, tok), rows).score().records
    assert [r["top1"] for r in whole] == [r["top1"] for r in chunked]
    assert [r["nll"] for r in whole] == pytest.approx([r["nll"] for r in chunked], abs=1e-6)


def test_a_continuation_longer_than_the_context_keeps_valid_positions():
    req = causal_request([5, 6, 7], list(range(10, 110)), True, (0, "main", 0), max_len=64)
    assert len(req.ids) == 63  # prompt token + 62 continuation inputs; the 63rd token is only a target
    assert req.ids[0] == 7 and req.topk_pos == 0
    assert [p for p, _ in req.targets] == list(range(63)) and min(p for p, _ in req.targets) >= 0
    model = build_tiny("llama")  # max_position_embeddings 64
    res = Scorer(model, None).run([req])[0]
    with torch.no_grad():  # by hand: the kept 63 inputs, each next token scored over the whole vocabulary
        logp = model(torch.tensor([req.ids])).logits[0].log_softmax(-1)
    want = [logp[p, t].item() for p, t in req.targets]
    assert [t for _, t in req.targets] == list(range(10, 73))
    assert res.logprobs == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("arch", ["roberta", "bert"])
def test_masked_prompts_past_the_position_table_are_cut_at_their_start(arch):
    model = build_tiny(arch)
    tok = tiny_tokenizer(masked=True)
    limit = max_positions(model)
    assert limit == (62 if arch == "roberta" else 64)  # RoBERTa positions start after padding_idx 1
    prompt = tok(" ".join(["dog"] * 100) + " the cat is")["input_ids"]
    cont = tok(" paris", add_special_tokens=False)["input_ids"]
    req = masked_request(tok, prompt, cont, True, (0, "main", 0), limit)
    assert len(req.ids) == limit
    assert req.ids[0] == tok.bos_token_id and req.ids[-1] == tok.sep_token_id  # specials kept
    assert tok.convert_ids_to_tokens(req.ids[-4:]) == ["cat", "is", "[MASK]", "[SEP]"]  # the prompt's end kept
    ex = Example(" ".join(["dog"] * 100) + " the cat is", answers=["paris"])
    got = evaluate(Scorer(model, tok), [ex], None).records[0]
    # By hand on the cut ids (the prompt's start dropped, its specials and end kept): the NLL at the mask.
    with torch.no_grad():
        logp = model(torch.tensor([req.ids])).logits[0].log_softmax(-1)
    (pos, token), = req.targets
    assert req.ids[pos] == tok.mask_token_id and got["nll"] == pytest.approx(-logp[pos, token].item(), abs=1e-5)
    assert got["pred_token"] == logp[pos].argmax().item()


def test_requests_are_scored_whatever_their_order():
    model = build_tiny("llama")
    reqs = [Request([2, 5, 6, 7], [(2, 9), (3, 10)], 3), Request([2, 8], [(1, 11)], None)]
    a = Scorer(model, None).run(reqs)
    b = Scorer(model, None).run(reqs[::-1])[::-1]
    assert a[0].logprobs == pytest.approx(b[0].logprobs) and a[0].top == b[0].top
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([[2, 5, 6, 7]])).logits[0], -1)
    assert a[0].logprobs == pytest.approx([lp[2, 9].item(), lp[3, 10].item()], abs=1e-5)
    assert a[0].top == lp[3].topk(10).indices.tolist()
