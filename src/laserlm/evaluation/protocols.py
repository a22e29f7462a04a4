"""How each built-in benchmark is run: prompt, rows, split and metrics, as data.

`paper` reproduces the authors' code (pratyushasharma/laser at d391375; file:line in `source`, and every
difference in docs/protocols.md). `laserlm` keeps the paper's prompts and rows but uses our alternatives
where we think they are better: a seeded split that keeps related rows together, generation accuracy with
the prompt excluded, and CounterFact paraphrases scored with their fact (the `robust` metric).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError

PROTOCOL_NAMES = ("paper", "laserlm")

VAL_FRACTION = 0.2
# The authors' BigBench scripts sweep rate in [1, 2, 4, 6, 8, 9, 9.5, 9.9, 9.95], i.e. rho = (10 - rate) / 10
# (src/intervention_gptj_bbh.py:336); the paper's figure grid is the seven without 0.4 and 0.005.
REPRODUCE_RHOS = (0.9, 0.8, 0.6, 0.4, 0.2, 0.1, 0.05, 0.01, 0.005)

# Where the authors' scripts fix a grid of their own, per model family (model_type) and benchmark: the layers as a
# function of the model's depth (the same layers on the paper's model, the same place from the top on a shallower
# or deeper one) and the rho. Elsewhere their scripts take (layer, rate) from the command line: every layer, and
# REPRODUCE_RHOS.
AUTHORS_GRIDS = {
    # src/intervention_gptj_bbh.py:329-336: layers 27 down to 17 of 28, the nine rates
    ("gptj", "bb_epistemic"): (lambda n: range(n - 11, n), REPRODUCE_RHOS, "src/intervention_gptj_bbh.py:329-336"),
    # src/intervention_llama2_bbh.py:326-333: layers 31 down to 27 of 32, rates 8, 9, 9.5, 9.9, 9.95
    ("llama", "bb_epistemic"): (lambda n: range(n - 5, n), (0.2, 0.1, 0.05, 0.01, 0.005),
                                "src/intervention_llama2_bbh.py:326-333"),
    # src/intervention_roberta_bbh.py:369-376 and _hotpot.py:381-388: layers 11 down to 1 of 12
    ("roberta", "bb_epistemic"): (lambda n: range(1, n), REPRODUCE_RHOS, "src/intervention_roberta_bbh.py:369-376"),
    ("roberta", "hotpotqa"): (lambda n: range(1, n), REPRODUCE_RHOS, "src/intervention_roberta_hotpot.py:381-388"),
}


@dataclass(frozen=True)
class Protocol:
    """One benchmark under one protocol.

    split: "head": the first 20% of rows in file order are val (the authors' `validate(predictions,
    split=0.2)`); "shuffle": groups of rows shuffled with --split-seed, 20% of groups to val.
    """

    template: str
    split: str
    primary: str
    metrics: tuple[str, ...]
    gen_tokens: int = 10
    min_new_tokens: int = 0  # EOS barred before this many generated tokens (the authors pass 1)
    max_answer_tokens: int | None = None  # rows whose answer is longer (model's tokenizer) are dropped
    source: str = ""


def _both(template: str, primary: str, metrics: tuple[str, ...], source: str, *, laser_primary: str | None = None,
          laser_metrics: tuple[str, ...] | None = None, **kw) -> dict[str, Protocol]:
    # The authors generate with min_new_tokens=1 (src/intervention_llama2_bbh_qa.py:101-103); ours is plain greedy.
    paper_min = 1 if any(m.startswith("gen01") for m in metrics) else 0
    return {"paper": Protocol(template, "head", primary, metrics, source=source, min_new_tokens=paper_min, **kw),
            "laserlm": Protocol(template, "shuffle", laser_primary or primary, laser_metrics or metrics,
                                source=source, **kw)}


CHOICE = ("acc", "logloss", "choice_logloss")
PROTOCOLS: dict[str, dict[str, Protocol]] = {
    "counterfact": _both("{requested_rewrite.prompt with subject} -> ' '+target_true; each paraphrase a row "
                         "(paper) or attached to its fact (laserlm)", "top1", ("top1", "top10", "logloss"),
                         "scripts/get_counterfact.py:36-44, src/intervention_gptj_counterfact.py:97",
                         laser_metrics=("top1", "top10", "logloss", "robust")),
    "hotpotqa": _both("{question}[?] The answer is -> ' '+answer", "gen01_paper", ("gen01_paper", "top1", "logloss"),
                      "src/dataset_utils/hotpot.py:15-40, src/intervention_gptj_hotpot.py:71-74,108",
                      laser_primary="gen01", laser_metrics=("gen01", "top1", "logloss"), gen_tokens=15,
                      max_answer_tokens=15),
    "fever": _both("Consider the following claim: {claim}[.] Is this claim true or false. The claim is -> "
                   "false | true", "acc", CHOICE, "src/dataset_utils/fever.py:12-63, src/intervention_gptj_fever.py:86-114"),
    "bios_gender": _both("Consider the following text: {bio}[.] Is the person in this text a male or female? "
                         "The gender of this person is -> male | female", "acc", CHOICE,
                         "src/dataset_utils/bias_in_bios.py:14-20, src/intervention_gptj_bios.py:85-112"),
    "bios_profession": _both("Consider the following text: {bio}[.] What is the profession of the person in this "
                             "text? The profession of this person is -> journalist | poet | ...", "acc", CHOICE,
                             "src/dataset_utils/bias_in_bios.py:31-93, src/intervention_gptj_bios_profession.py:84-104"),
    "truthfulqa": _both("{question} {answer}[.]Is this statement true or false? This statement is -> false | true",
                        "acc", CHOICE, "src/dataset_utils/truthfulqa.py:7-28, src/intervention_gptj_truthfulqa.py:64-108"),
    "truthfulqa_mc1": _both("{6-shot prefix}\\nQ: {question}\\nA: -> answers", "acc", CHOICE,
                            "not in the paper (BIG-bench truthful_qa mc1), kept for comparison"),
    "bb_epistemic": _both("{BIG-bench prefix}\\n{premise and hypothesis}\\nRelation: -> entailment | "
                          "non-entailment", "acc", CHOICE,
                          "src/dataset_utils/bigbench.py:31-41, src/intervention_gptj_bbh.py:101-125,246-252"),
    "bb_wikidata": _both("{input} -> ' '+target (rows with one target)", "gen01_paper",
                         ("gen01_paper", "top1", "top10", "logloss"),
                         "src/dataset_utils/bigbench.py:59-70, src/intervention_gptj_bbh_qa.py:94-121,186-190",
                         laser_primary="gen01", laser_metrics=("gen01", "top1", "top10", "logloss")),
}


def get_protocol(task: str, name: str) -> Protocol:
    if name not in PROTOCOL_NAMES:
        raise UserError(f"unknown protocol {name!r}: use paper or laserlm")
    return PROTOCOLS[task][name]


def with_period(text: str) -> str:
    """The authors' rule: strip, then add '.' unless the text ends with '.' or '?'."""
    text = text.strip()
    return text if text.endswith((".", "?")) else text + "."


def fever_prompt(claim: str) -> str:
    return f"Consider the following claim: {with_period(claim)} Is this claim true or false. The claim is"


def bios_gender_prompt(bio: str) -> str:
    return (f"Consider the following text: {with_period(bio)} Is the person in this text a male or female? "
            "The gender of this person is")


def bios_profession_prompt(bio: str) -> str:
    return (f"Consider the following text: {with_period(bio)} What is the profession of the person in this text? "
            "The profession of this person is")


def truthful_prompt(question: str, answer: str) -> str:
    # No strip and no space before "Is": src/dataset_utils/truthfulqa.py:24-27.
    text = question + " " + answer
    return (text if text.endswith(".") else text + ".") + "Is this statement true or false? This statement is"


def hotpot_prompt(question: str) -> str:
    q = question.strip()
    return f"{q} The answer is" if q.endswith(("?", ".")) else f"{q}? The answer is"


# The authors' RoBERTa prompts: the answer goes at "<mask>" (src/intervention_roberta_*.py).
def bios_gender_mlm(bio: str) -> str:  # src/intervention_roberta_bios_gender.py:300-305
    return (f"Consider the following text: {with_period(bio)} Is the person in this text a male or female? "
            "This person is <mask>.")


def bios_profession_mlm(bio: str) -> str:  # src/intervention_roberta_bios_profession.py:286-291
    return (f"Consider the following text: {with_period(bio)} The profession of the person in the text is called "
            "<mask>.")


def fever_mlm(claim: str) -> str:  # src/intervention_roberta_fever.py:294-300
    return f"Consider the following claim: {with_period(claim)} Is this claim true or false. The claim is <mask>"


def truthful_mlm(question: str, answer: str) -> str:  # src/intervention_roberta_truthfulqa.py:280
    return truthful_prompt(question, answer) + " <mask>"


def counterfact_mlm(prompt: str) -> str:  # src/intervention_roberta_counterfact.py:268-271
    return f"{prompt}<mask>." if prompt.endswith(" ") else f"{prompt} <mask>."
