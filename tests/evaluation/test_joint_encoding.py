"""Joint encoding with a Llama-2-style SentencePiece tokenizer: a continuation is never a lone "▁".

Llama-2's legacy tokenizer.json normalizes with Sequence(Prepend("▁"), Replace(" ", "▁")) and has no
pre-tokenizer, so " Paris" encoded alone is ["▁", "▁Paris"]. Built here with the `tokenizers` library.
"""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from laserlm.evaluation.evaluate import build_requests, evaluate
from laserlm.evaluation.scoring import Scorer, encode_pair
from laserlm.evaluation.tasks import Example

WORDS = ["The", "capital", "of", "France", "is", "Paris", "Rome", "true", "false", "claim", "This", "statement"]


def llama2_legacy_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, processors

    vocab = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + w, -1.0) for w in WORDS] + [(ch, -5.0) for ch in sorted(set("".join(WORDS)))]
    tok = Tokenizer(models.Unigram(vocab, unk_id=0))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                      pad_token="</s>")


@pytest.fixture(scope="module")
def tok():
    return llama2_legacy_tokenizer()


def test_the_fault_is_reproduced(tok):
    assert tok.convert_ids_to_tokens(tok(" Paris", add_special_tokens=False)["input_ids"]) == ["▁", "▁Paris"]


def test_joint_encoding_takes_the_tail(tok):
    ctx, cont = encode_pair(tok, "The capital of France is", " Paris")
    assert tok.convert_ids_to_tokens(ctx) == ["<s>", "▁The", "▁capital", "▁of", "▁France", "▁is"]
    assert tok.convert_ids_to_tokens(cont) == ["▁Paris"]
    # Whitespace at the end of the context moves onto the continuation.
    assert encode_pair(tok, "The capital of France is ", "Paris") == (ctx, cont)


def _model(tok):
    torch.manual_seed(0)
    config = tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=64)
    return tf.AutoModelForCausalLM.from_config(config).eval()


def test_the_scored_first_token_is_the_word(tok):
    model = _model(tok)
    ex = Example("The capital of France is", answers=["Paris", "Rome"])
    requests, encodings = build_requests(Scorer(model, tok), [ex], False)
    assert requests[0].targets == [(5, tok.convert_tokens_to_ids("▁Paris"))]
    assert {ids[0] for ids in encodings[0]} == {tok.convert_tokens_to_ids("▁Paris"), tok.convert_tokens_to_ids("▁Rome")}
    with torch.no_grad():
        logits = model(torch.tensor([tok("The capital of France is")["input_ids"]])).logits[0, -1]
    rec = evaluate(Scorer(model, tok), [ex]).records[0]
    assert rec["top1"] == (logits.argmax().item() in {tok.convert_tokens_to_ids("▁Paris"),
                                                       tok.convert_tokens_to_ids("▁Rome")})
    assert rec["nll"] == pytest.approx(-torch.log_softmax(logits, -1)[tok.convert_tokens_to_ids("▁Paris")].item(),
                                       abs=1e-5)


def test_choice_scores_equal_a_hand_computation_on_the_joint_encoding(tok):
    model = _model(tok)
    ex = Example("This statement is", choices=[" false", " true claim"], label=1)
    got = evaluate(Scorer(model, tok), [ex]).records[0]
    for c, choice in enumerate(ex.choices):
        whole = tok("This statement is" + choice)["input_ids"]
        n_ctx = len(tok("This statement is")["input_ids"])
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([whole])).logits[0], -1)
        hand = sum(lp[j - 1, whole[j]].item() for j in range(n_ctx, len(whole)))
        assert got["scores"][c] == pytest.approx(hand, abs=1e-5)
        assert tok.convert_ids_to_tokens(got["continuations"][c]["ids"])[0] != "▁"
    n_gold = len(got["continuations"][1]["ids"])
    assert got["nll"] == pytest.approx(-got["scores"][1] / n_gold, abs=1e-6)
