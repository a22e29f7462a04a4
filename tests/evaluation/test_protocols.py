"""The paper protocol, checked against the authors' code written out by hand: prompts, rows, order and split.

Each expected prompt below is typed from pratyushasharma/laser (file:line in protocols.py), not computed.
"""

from __future__ import annotations

import gzip
import json
import random
from importlib import resources

import pytest

from laserlm.evaluation.protocols import PROTOCOLS, get_protocol
from laserlm.evaluation.tasks import BUILTINS, Example, load_task


def _load(tmp_path, name, rows, protocol="paper"):
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_task(name, str(path), protocol)


def test_fever_prompts(tmp_path):
    task = _load(tmp_path, "fever", [{"claim": "Nikolaj Coster-Waldau worked with the Fox Broadcasting Company.",
                                      "label": "SUPPORTS"}, {"claim": " Roman Atwood is a content creator ",
                                                             "label": "REFUTES"}])
    assert [e.prompt for e in task.examples] == [
        "Consider the following claim: Nikolaj Coster-Waldau worked with the Fox Broadcasting Company. Is this "
        "claim true or false. The claim is",
        "Consider the following claim: Roman Atwood is a content creator. Is this claim true or false. The claim is"]
    assert [e.label for e in task.examples] == [1, 0] and task.examples[0].choices == [" false", " true"]


def test_fever_keeps_consistent_claims_within_each_hub_split(tmp_path):
    rows = [{"claim": "A", "label": 1, "_split": "paper_dev"}, {"claim": "A", "label": 0, "_split": "paper_dev"},
            {"claim": "B", "label": 1, "_split": "paper_dev"}, {"claim": "B", "label": 1, "_split": "paper_dev"},
            {"claim": "A", "label": 1, "_split": "paper_test"}]
    task = _load(tmp_path, "fever", rows)
    assert [(e.prompt.split(": ")[1][0], e.label) for e in task.examples] == [("B", 1), ("A", 1)]


def test_bios_prompts(tmp_path):
    rows = [{"hard_text": "She is a poet in Ohio", "gender": 1, "profession": 20},
            {"hard_text": "He teaches physics?", "gender": 0, "profession": 13}]  # 13 (nurse) is not kept
    gender = _load(tmp_path, "bios_gender", rows)
    assert [e.prompt for e in gender.examples] == [
        "Consider the following text: She is a poet in Ohio. Is the person in this text a male or female? "
        "The gender of this person is",
        "Consider the following text: He teaches physics? Is the person in this text a male or female? "
        "The gender of this person is"]
    assert [e.label for e in gender.examples] == [1, 0]
    profession = _load(tmp_path, "bios_profession", rows)
    assert [e.prompt for e in profession.examples] == [
        "Consider the following text: She is a poet in Ohio. What is the profession of the person in this text? "
        "The profession of this person is"]
    assert profession.examples[0].choices[profession.examples[0].label] == " poet"


def test_truthfulqa_prompts(tmp_path):
    task = _load(tmp_path, "truthfulqa", [{"question": "What is the capital of France?",
                                           "mc2_targets": {"choices": ["Paris", "Lyon is."], "labels": [1, 0]}}])
    assert [(e.prompt, e.label) for e in task.examples] == [
        ("What is the capital of France? Paris.Is this statement true or false? This statement is", 1),
        ("What is the capital of France? Lyon is.Is this statement true or false? This statement is", 0)]


def test_hotpotqa_prompts_and_answer_length(tmp_path):
    task = _load(tmp_path, "hotpotqa", [{"question": "Which city is larger ", "answer": " Paris "},
                                        {"question": "Who wrote Hamlet?", "answer": "a b c d e f g h i j k l m n o p"}])
    assert [(e.prompt, e.answers) for e in task.examples] == [
        ("Which city is larger? The answer is", ["Paris"]),
        ("Who wrote Hamlet? The answer is", ["a b c d e f g h i j k l m n o p"])]
    words = lambda text: {"input_ids": [1] + text.split()}  # BOS + one token per word, as counted by the authors
    assert task.drop_long_answers(words) == 1 and len(task.examples) == 1


def test_counterfact_paraphrases_are_rows_of_their_own(tmp_path):
    fact = {"requested_rewrite": {"prompt": "{} is located in", "subject": "Paris", "target_true": {"str": "France"}},
            "paraphrase_prompts": ["Paris sits in", "Paris lies in"]}
    paper = _load(tmp_path, "counterfact", [fact])
    assert [(e.prompt, e.answers) for e in paper.examples] == [
        ("Paris is located in", ["France"]), ("Paris sits in", ["France"]), ("Paris lies in", ["France"])]
    ours = _load(tmp_path, "counterfact", [fact], protocol="laserlm")
    assert len(ours.examples) == 1 and ours.examples[0].paraphrases == ["Paris sits in", "Paris lies in"]


def test_tasksource_rows_keep_their_order_and_one_target(tmp_path):
    wiki = _load(tmp_path, "bb_wikidata", [{"inputs": "The capital of France is", "targets": ["Paris"]},
                                           {"inputs": "The genre of X is", "targets": ["comedy", "parody"]},
                                           {"inputs": "The author of Hamlet is ", "targets": [" Shakespeare"]}])
    assert [(e.prompt, e.answers) for e in wiki.examples] == [
        ("The capital of France is", ["Paris"]), ("The author of Hamlet is", ["Shakespeare"])]
    epi = _load(tmp_path, "bb_epistemic", [{"inputs": "Identify ...\n\nPremise: a. Hypothesis: b.\nRelation:",
                                            "targets": ["non-entailment"]}])
    assert epi.examples[0].prompt.endswith("Relation:") and epi.examples[0].label == 1


def _vendored(name):
    path = resources.files("laserlm") / "data" / "bigbench" / f"{name}.json.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)["examples"]


def test_vendored_bigbench_rows_follow_tasksource_validation_then_train():
    # BIG-bench's bbseqio split, as tasksource/bigbench holds it: random.seed(42); random.shuffle(examples);
    # validation = the last max(int(0.2 n), 16), train = the rest. The authors read validation, then train.
    examples = _vendored("qa_wikidata")
    random.seed(42)
    random.shuffle(examples)
    n_val = max(int(0.2 * len(examples)), 16)
    order = examples[-n_val:] + examples[:-n_val]
    single = [e for e in order if isinstance(e["target"], str) or len(e["target"]) == 1]
    task = load_task("bb_wikidata")
    assert len(task.examples) == len(single) == 18933
    for ex, raw in zip(task.examples[:50], single[:50]):
        target = raw["target"] if isinstance(raw["target"], str) else raw["target"][0]
        assert (ex.prompt, ex.answers) == (raw["input"].strip(), [target.strip()])


def test_paper_split_is_the_first_fifth_in_file_order():
    task = load_task("bb_epistemic")
    val, test = task.select("val"), task.select("test")
    assert len(val) == int(0.2 * 2000) == 400
    assert val == task.examples[:400] and test == task.examples[400:]
    shuffled = load_task("bb_epistemic", protocol="laserlm")
    assert shuffled.select("val") != shuffled.examples[:400]


def test_every_builtin_has_both_protocols():
    for name in BUILTINS:
        paper, ours = get_protocol(name, "paper"), get_protocol(name, "laserlm")
        assert paper.split == "head" and ours.split == "shuffle"
        assert paper.primary in paper.metrics and ours.primary in ours.metrics
        assert "logloss" in paper.metrics
    assert PROTOCOLS["bb_wikidata"]["paper"].primary == "gen01_paper"
    assert PROTOCOLS["bb_wikidata"]["laserlm"].primary == "gen01"
    with pytest.raises(Exception, match="unknown protocol"):
        get_protocol("fever", "mine")


def test_masked_lms_get_the_authors_roberta_prompts(tmp_path):
    import torch

    from laserlm.evaluation.evaluate import build_requests, evaluate
    from laserlm.evaluation.scoring import Scorer

    from conftest import build_tiny, tiny_tokenizer

    rows = [{"hard_text": "She is a poet", "gender": 1, "profession": 20}]
    task = _load(tmp_path, "bios_gender", rows)
    assert task.examples[0].mlm_prompt == ("Consider the following text: She is a poet. Is the person in this text a "
                                           "male or female? This person is <mask>.")
    fact = {"requested_rewrite": {"prompt": "{} is located in", "subject": "Paris", "target_true": {"str": "France"}},
            "paraphrase_prompts": []}
    assert _load(tmp_path, "counterfact", [fact]).examples[0].mlm_prompt == "Paris is located in <mask>."
    fever = _load(tmp_path, "fever", [{"claim": "A cat sat", "label": 1}]).examples[0]
    assert fever.mlm_prompt == "Consider the following claim: A cat sat. Is this claim true or false. The claim is <mask>"
    model, tok = build_tiny("roberta"), tiny_tokenizer(masked=True)
    ex = task.examples[0]
    reqs, _ = build_requests(Scorer(model, tok), [ex], False)
    ids = reqs[0].ids
    at = ids.index(tok.mask_token_id)
    assert ids[at + 1:] == tok("x .")["input_ids"][-2:]  # the mask is followed by "." and [SEP], as written
    assert reqs[0].targets == [(at, tok.convert_tokens_to_ids("male"))]
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0, at], -1)
    scores = evaluate(Scorer(model, tok), [ex]).records[0]["scores"]
    assert scores == pytest.approx([lp[tok.convert_tokens_to_ids(w)].item() for w in ("male", "female")], abs=1e-5)


def test_masked_lms_on_bigbench_and_hotpotqa_follow_the_authors_five_mask_scripts(tmp_path):
    """src/intervention_roberta_hotpot.py and _bbh.py: the loss scores "{prompt} {answer}" encoded without
    special tokens with the answer's tokens masked; the accuracy decodes the argmax at five masks after the
    prompt (special tokens kept) and looks for the answer in it."""
    import torch

    from laserlm.evaluation.evaluate import build_requests, evaluate
    from laserlm.evaluation.metrics import METRICS
    from laserlm.evaluation.scoring import Scorer

    from conftest import build_tiny, tiny_tokenizer

    hotpot = _load(tmp_path, "hotpotqa", [{"question": "where is paris", "answer": "france"}]).examples[0]
    assert (hotpot.mlm_prompt, hotpot.mlm_bare) == ("where is paris? The answer is <mask>", True)
    assert _load(tmp_path, "hotpotqa", [{"question": "where is paris", "answer": "france"}],
                 protocol="laserlm").examples[0].mlm_prompt is None
    model, tok = build_tiny("roberta"), tiny_tokenizer(masked=True)
    # The tiny vocabulary: a BigBench-like choice row and a cloze row, as the builtin converters make them.
    choice = Example("is the cat big", choices=[" yes", " no maybe"], label=1, mlm_prompt="is the cat big <mask>",
                     mlm_bare=True)
    reqs, _ = build_requests(Scorer(model, tok), [choice], False)
    assert reqs[1].ids == tok("is the cat big no maybe", add_special_tokens=False)["input_ids"][:4] + [tok.mask_token_id] * 2
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([reqs[1].ids])).logits[0], -1)
    no, maybe = tok.convert_tokens_to_ids(["no", "maybe"])
    assert evaluate(Scorer(model, tok), [choice]).records[0]["scores"][1] == pytest.approx(
        lp[4, no].item() + lp[5, maybe].item(), abs=1e-5)

    cloze = [Example("the capital of france is", answers=["paris"]), Example("one two", answers=["three"])]
    got = evaluate(Scorer(model, tok), cloze, [METRICS["gen01"], METRICS["gen01_paper"]]).records
    for ex, rec in zip(cloze, got):
        ids = tok(ex.prompt + " [MASK]" * 5)["input_ids"]
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.sep_token_id and ids.count(tok.mask_token_id) == 5
        with torch.no_grad():
            best = model(torch.tensor([ids])).logits[0].argmax(-1)
        text = tok.decode([best[p].item() for p, t in enumerate(ids) if t == tok.mask_token_id])
        assert rec["generation"] == text
        assert rec["gen01"] == rec["gen01_paper"] == (ex.answers[0] in text.lower())
    # A model that fills every mask with the answer is right, whatever the prompt: the check can fail and pass.
    with torch.no_grad():
        model.lm_head.decoder.bias.zero_()
        model.lm_head.decoder.bias[tok.convert_tokens_to_ids("paris")] = 1e4
    got = evaluate(Scorer(model, tok), cloze, [METRICS["gen01"]])
    assert [r["gen01"] for r in got.records] == [True, False] and got.metrics["gen01"] == 0.5
