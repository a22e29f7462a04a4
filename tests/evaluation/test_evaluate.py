"""Every metric against a hand computation: one unbatched full forward per sequence, the contract's words."""

from __future__ import annotations

import math

import pytest
import torch

from laserlm.evaluation.evaluate import evaluate, perplexity
from laserlm.evaluation.metrics import METRICS
from laserlm.evaluation.scoring import Request, Scorer
from laserlm.evaluation.tasks import Example

from conftest import ARCHS, MLM, build_tiny, tiny_tokenizer

CLOZE = [
    Example("the capital of france is", answers=["paris"]),
    Example("the big city is", answers=["new york city", "rome"]),  # three-token first answer
    Example("the cat sat on", answers=["a mat", "the"], paraphrases=["cat sat on the", "the dog sat on"]),
    Example("what is one and two", answers=["three"], paraphrases=["one and two is"]),
    Example("where is berlin", answers=["berlin"]),
]
CHOICE = [
    Example("is paris the capital of france", choices=[" yes", " no", " it was maybe"], label=0),
    Example("the cat is", choices=[" big", " small red cat"], label=1),
    Example("one two three", choices=[" four", " four five six seven", " ten"], label=0),
    Example("true or false", choices=[" true", " false"], label=1),
]


def full_logprobs(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)


def hand_cloze(model, tok, ex: Example) -> dict:
    p = tok(ex.prompt)["input_ids"]
    answers = [tok(" " + a, add_special_tokens=False)["input_ids"] for a in ex.answers]
    lp = full_logprobs(model, p + answers[0])
    nxt = lp[len(p) - 1]
    top10 = nxt.topk(10).indices.tolist()
    firsts = {a[0] for a in answers}
    nll = -sum(lp[len(p) - 1 + j, t].item() for j, t in enumerate(answers[0])) / len(answers[0])
    top1 = nxt.argmax().item() in firsts
    para_ok = [full_logprobs(model, tok(q)["input_ids"])[-1].argmax().item() in firsts for q in ex.paraphrases]
    return {"top1": top1, "top10": bool(firsts & set(top10)), "nll": nll, "robust": top1 and all(para_ok)}


def hand_choice(model, tok, ex: Example) -> dict:
    p = tok(ex.prompt)["input_ids"]
    scores, lengths = [], []
    for c in ex.choices:
        cont = tok(c, add_special_tokens=False)["input_ids"]
        lp = full_logprobs(model, p + cont)
        scores.append(sum(lp[len(p) - 1 + j, t].item() for j, t in enumerate(cont)))
        lengths.append(len(cont))
    s = torch.tensor(scores, dtype=torch.float64)
    return {"acc": int(s.argmax()) == ex.label, "logloss": -scores[ex.label] / lengths[ex.label],
            "choice_logloss": -(s[ex.label] - torch.logsumexp(s, 0)).item()}


def _avg(rows, key):
    return sum(float(r[key]) for r in rows) / len(rows)


@pytest.mark.parametrize("arch", [a for a in ARCHS if a not in MLM])
def test_cloze_metrics_match_hand_computation(arch):
    model, tok = build_tiny(arch), tiny_tokenizer()
    hand = [hand_cloze(model, tok, ex) for ex in CLOZE]
    got = evaluate(Scorer(model, tok), CLOZE, [METRICS[m] for m in ("top1", "top10", "logloss", "robust")])
    assert got.metrics["top1"] == _avg(hand, "top1")
    assert got.metrics["top10"] == _avg(hand, "top10")
    assert got.metrics["robust"] == _avg(hand, "robust")
    assert got.metrics["logloss"] == pytest.approx(_avg(hand, "nll"), abs=1e-5)
    for rec, h in zip(got.records, hand):
        assert rec["nll"] == pytest.approx(h["nll"], abs=1e-5)


@pytest.mark.parametrize("arch", [a for a in ARCHS if a not in MLM])
def test_choice_metrics_match_hand_computation(arch):
    model, tok = build_tiny(arch), tiny_tokenizer()
    hand = [hand_choice(model, tok, ex) for ex in CHOICE]
    got = evaluate(Scorer(model, tok), CHOICE)
    assert set(got.metrics) == {"acc", "logloss", "choice_logloss"}
    assert got.metrics["acc"] == _avg(hand, "acc")
    # logloss: the paper's, per-token NLL of the correct choice over the whole vocabulary;
    # choice_logloss: calibrated among the choices.
    assert got.metrics["logloss"] == pytest.approx(_avg(hand, "logloss"), abs=1e-5)
    assert got.metrics["choice_logloss"] == pytest.approx(_avg(hand, "choice_logloss"), abs=1e-5)


def test_a_hand_made_model_gives_closed_form_numbers():
    """With ln_f's gain zeroed, the final hidden state is ln_f.bias everywhere, so every position predicts
    the same known distribution logp = log_softmax(W_out @ bias), and each metric is a closed formula."""
    model, tok = build_tiny("gpt2"), tiny_tokenizer()
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        logp = torch.log_softmax(model.lm_head.weight @ model.transformer.ln_f.bias, -1)
    best = tok.convert_ids_to_tokens(int(logp.argmax()))
    rows = CLOZE + [Example("the", answers=[best]), Example("a", answers=["zzz unknown", best])]

    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    got = evaluate(Scorer(model, tok), rows)
    assert got.metrics["top1"] == pytest.approx(2 / 7)
    top10 = set(logp.topk(10).indices.tolist())
    assert got.metrics["top10"] == pytest.approx(sum(bool(top10 & {ids(" " + a)[0] for a in r.answers}) for r in rows) / 7)
    nll = [-logp[ids(" " + r.answers[0])].mean().item() for r in rows]
    assert got.metrics["logloss"] == pytest.approx(sum(nll) / 7, abs=1e-5)

    choice = evaluate(Scorer(model, tok), CHOICE)
    acc, loss, calibrated = 0, 0.0, 0.0
    for r in CHOICE:
        s = torch.tensor([logp[ids(c)].sum().item() for c in r.choices], dtype=torch.float64)
        acc += int(s.argmax()) == r.label
        loss -= logp[ids(r.choices[r.label])].mean().item()  # the paper's: over the whole vocabulary
        calibrated -= (s[r.label] - torch.logsumexp(s, 0)).item()  # among the choices only
    assert choice.metrics["acc"] == acc / 4
    assert choice.metrics["logloss"] == pytest.approx(loss / 4, abs=1e-5)
    assert choice.metrics["choice_logloss"] == pytest.approx(calibrated / 4, abs=1e-5)
    assert choice.metrics["logloss"] != pytest.approx(choice.metrics["choice_logloss"], abs=1e-3)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batching_does_not_change_numbers(arch):
    model, tok = build_tiny(arch), tiny_tokenizer()
    rows = CLOZE * 3
    a = evaluate(Scorer(model, tok, batch_size=1), rows).metrics
    b = evaluate(Scorer(model, tok, max_tokens=64), rows).metrics
    c = evaluate(Scorer(model, tok), rows).metrics
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-5) == pytest.approx(c[k], abs=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_fast_head_equals_full_forward(arch):
    model, tok = build_tiny(arch), tiny_tokenizer(masked=arch in MLM)
    scorer = Scorer(model, tok)
    assert scorer.fast
    ids = torch.tensor([[2, 5, 6, 7, 8, 9], [2, 10, 11, 0, 0, 0]])
    mask = (torch.arange(6) < torch.tensor([[6], [3]])).long()
    rows, cols = torch.tensor([0, 0, 1, 1]), torch.tensor([2, 5, 0, 2])
    batch = scorer.collate([[Request([2, 5, 6, 7, 8, 9], [])], [Request([2, 10, 11], [])]])
    assert torch.equal(batch.ids, ids) and torch.equal(batch.mask, mask)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits[rows, cols]
        fast = scorer.head(scorer.hidden(batch)[rows, cols]).float()
    torch.testing.assert_close(fast, full.float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", sorted(MLM))
def test_masked_lm_predicts_at_the_mask(arch):
    model, tok = build_tiny(arch), tiny_tokenizer(masked=True)
    got = evaluate(Scorer(model, tok), CLOZE[:2])
    for ex, rec in zip(CLOZE[:2], got.records):
        p = tok(ex.prompt)["input_ids"]  # [BOS] ... [SEP]
        ans = tok(" " + ex.answers[0], add_special_tokens=False)["input_ids"]
        ids = p[:-1] + [tok.mask_token_id] * len(ans) + p[-1:]
        lp = full_logprobs(model, ids)
        nll = -sum(lp[len(p) - 1 + j, t].item() for j, t in enumerate(ans)) / len(ans)
        assert rec["nll"] == pytest.approx(nll, abs=1e-5)
        assert rec["pred_token"] == lp[len(p) - 1].argmax().item()


def test_gen01_excludes_the_prompt():
    model, tok = build_tiny("llama"), tiny_tokenizer()
    rows = [Example("paris is the capital of", answers=["paris"]), Example("the cat sat on", answers=["mat"])]
    got = evaluate(Scorer(model, tok), rows, [METRICS["gen01"]], gen_tokens=4)
    for ex, rec in zip(rows, got.records):
        ids = tok(ex.prompt)["input_ids"]
        for _ in range(4):  # greedy by hand
            ids.append(full_logprobs(model, ids)[-1].argmax().item())
        text = tok.decode(ids[len(tok(ex.prompt)["input_ids"]):], skip_special_tokens=True)
        assert rec["generation"] == text
        assert rec["gen01"] == (ex.answers[0] in text.lower())


def test_perplexity_matches_a_hand_sliding_window():
    model, tok = build_tiny("gpt2"), tiny_tokenizer()
    text = " ".join(["the cat sat on the mat and the dog was big"] * 6)
    ids = tok(text)["input_ids"]
    got = perplexity(Scorer(model, tok), text, window=16, stride=8)
    nll, n, prev = 0.0, 0, 0
    for begin in range(0, len(ids), 8):
        end = min(begin + 16, len(ids))
        lp = full_logprobs(model, ids[begin:end])
        for j in range(max(prev, begin + 1), end):
            nll -= lp[j - begin - 1, ids[j]].item()
            n += 1
        prev = end
        if end == len(ids):
            break
    assert got["tokens"] == len(ids) - 1 == n
    assert got["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-5)


def test_gen01_and_gen01_paper_on_a_causal_model_where_they_differ():
    """A head biased toward "mat": every generation is "mat ...". Row 1's answer is only in its prompt (gen01_paper
    true, gen01 false), row 2's is generated (both true); each value follows from the bias, not from the code."""
    model, tok = build_tiny("llama"), tiny_tokenizer()
    old = model.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[tok.convert_tokens_to_ids("mat")] = 1e4
    model.lm_head = head
    rows = [Example("paris is the capital of", answers=["paris"]), Example("the cat sat on", answers=["mat"])]
    got = evaluate(Scorer(model, tok), rows, [METRICS["gen01"], METRICS["gen01_paper"]], gen_tokens=3)
    assert [r["generation"] for r in got.records] == ["mat mat mat", "mat mat mat"]
    assert [r["gen01"] for r in got.records] == [False, True]
    assert [r["gen01_paper"] for r in got.records] == [True, True]
    assert got.metrics == {"gen01": 0.5, "gen01_paper": 1.0}
