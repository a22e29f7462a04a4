"""The paper's benchmarks, each with the prompt form of the original LASER code.

BIG-bench tasks and TruthfulQA read files vendored from bigbench==1.0.0 (Apache-2.0, see
data/bigbench/NOTICE) and work offline. The others load through `datasets` from the hub ids below, or
from `--data PATH`, a local copy in the same schema (.jsonl/.json rows, or .csv/.parquet).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable

from ...errors import UserError
from .base import Example, Task
from .custom import read_utf8

TF = [" false", " true"]
PROFESSIONS = ["journalist", "poet", "composer", "model", "teacher", "architect", "painter", "professor"]
BIOS_PROFESSION_IDS = {11: "journalist", 20: "poet", 5: "composer", 12: "model", 26: "teacher",
                       1: "architect", 14: "painter", 21: "professor"}


@dataclass(frozen=True)
class Builtin:
    kind: str
    source: str  # hub "id[:config] split[+split]" or the vendored file
    prompt: str  # the prompt form, for --help and README
    convert: Callable[[Iterable[dict]], list[Example]]
    vendored: str | None = None


def _bigbench(name: str) -> dict:
    path = resources.files("laserlm") / "data" / "bigbench" / f"{name}.json.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def _wikidata(rows) -> list[Example]:
    return [Example(r["input"], answers=[r["target"]] if isinstance(r["target"], str) else list(r["target"]))
            for r in rows]


_EPISTEMIC_PREFIX = ("Identify the relation between the following premises and hypotheses, choosing from "
                     "the options 'entailment' or 'non-entailment'.\n")


def _epistemic(rows) -> list[Example]:
    names = ["entailment", "non-entailment"]
    return [Example(f"{_EPISTEMIC_PREFIX}\n{r['input']}\nRelation:", choices=[" " + n for n in names],
                    label=names.index(next(k for k, v in r["target_scores"].items() if v == 1)))
            for r in rows]


def _statement(question: str, answer: str) -> str:
    text = f"{question} {answer}"
    return (text if text.endswith(".") else text + ".") + " Is this statement true or false? This statement is"


def _truthful_statements(rows) -> list[Example]:
    out = []
    for i, r in enumerate(rows):
        if "mc2_targets" in r:  # the hub schema (truthful_qa, multiple_choice)
            pairs = zip(r["mc2_targets"]["choices"], r["mc2_targets"]["labels"])
            question = r["question"]
        else:  # BIG-bench questions.json
            pairs = [(a, 1) for a in r["True answers"]] + [(a, 0) for a in r["False answers"]]
            question = r["Question"]
        out += [Example(_statement(question, a), choices=TF, label=int(y), group=f"q{i}") for a, y in pairs]
    return out


def _truthful_mc1(rows) -> list[Example]:
    prefix = _bigbench("truthful_qa_mc")["task_prefix"]
    out = []
    for r in rows:
        if "mc1_targets" in r:  # hub schema
            answers, labels, q = r["mc1_targets"]["choices"], r["mc1_targets"]["labels"], r["question"]
        else:
            answers, labels, q = list(r["target_scores"]), list(r["target_scores"].values()), r["input"]
        out.append(Example(f"{prefix}\nQ: {q}\nA:", choices=[" " + a for a in answers], label=labels.index(1)))
    return out


def _counterfact(rows) -> list[Example]:
    return [Example(r["requested_rewrite"]["prompt"].format(r["requested_rewrite"]["subject"]),
                    answers=[r["requested_rewrite"]["target_true"]["str"]],
                    paraphrases=list(r.get("paraphrase_prompts", []))) for r in rows]


def _hotpot(rows) -> list[Example]:
    return [Example(f"{r['question'].strip()} The answer is", answers=[r["answer"].strip()]) for r in rows]


def _fever(rows) -> list[Example]:
    labels: dict[str, set] = {}
    for r in rows:
        y = r["label"]
        y = {"SUPPORTS": 1, "REFUTES": 0}.get(y, y) if isinstance(y, str) else y
        if y in (0, 1):
            labels.setdefault(r["claim"], set()).add(y)
    # As in the original: keep claims whose annotations agree, once each.
    return [Example(f"Consider the following claim: {c} Is this claim true or false? The claim is",
                    choices=TF, label=ys.pop()) for c, ys in labels.items() if len(ys) == 1]


def _bios_gender(rows) -> list[Example]:
    return [Example(f"{r['hard_text']} Is the person male or female? The person is",
                    choices=[" male", " female"], label=int(r["gender"])) for r in rows]


def _bios_profession(rows) -> list[Example]:
    return [Example(f"{r['hard_text']} What is the person's profession? Answer:",
                    choices=[" " + p for p in PROFESSIONS],
                    label=PROFESSIONS.index(BIOS_PROFESSION_IDS[int(r["profession"])]))
            for r in rows if int(r["profession"]) in BIOS_PROFESSION_IDS]


BUILTINS: dict[str, Builtin] = {
    "bb_wikidata": Builtin("cloze", "vendored BIG-bench qa_wikidata (20,442 rows)", "{input}", _wikidata,
                           "qa_wikidata"),
    "bb_epistemic": Builtin("choice", "vendored BIG-bench epistemic_reasoning (2,000 rows)",
                            "{task prefix}\\n{premise/hypothesis}\\nRelation: -> entailment | non-entailment",
                            _epistemic, "epistemic_reasoning"),
    "truthfulqa": Builtin("choice", "vendored BIG-bench truthful_qa questions (299 questions -> 2,021 true/false "
                          "statements); --data takes the hub's truthful_qa:multiple_choice validation rows",
                          "{question} {answer}. Is this statement true or false? This statement is -> false | true",
                          _truthful_statements, "truthful_qa_questions"),
    "truthfulqa_mc1": Builtin("choice", "vendored BIG-bench truthful_qa task_mc (mc1); --data takes the hub's "
                              "truthful_qa:multiple_choice rows", "{6-shot prefix}\\nQ: {question}\\nA: -> answers",
                              _truthful_mc1, "truthful_qa_mc"),
    "counterfact": Builtin("cloze", "azhx/counterfact train", "{requested_rewrite.prompt with subject} "
                           "-> target_true, with paraphrase_prompts", _counterfact),
    "hotpotqa": Builtin("cloze", "hotpotqa/hotpot_qa:fullwiki validation", "{question} The answer is -> answer",
                        _hotpot),
    "fever": Builtin("choice", "EleutherAI/fever:v1.0 paper_dev+paper_test", "Consider the following claim: "
                     "{claim} Is this claim true or false? The claim is -> false | true", _fever),
    "bios_gender": Builtin("choice", "LabHC/bias_in_bios dev", "{hard_text} Is the person male or female? "
                           "The person is -> male | female", _bios_gender),
    "bios_profession": Builtin("choice", "LabHC/bias_in_bios dev (8 professions)", "{hard_text} What is the "
                               "person's profession? Answer: -> journalist | poet | ...", _bios_profession),
}


def _local_rows(path: Path) -> list[dict]:
    if not path.exists():
        raise UserError(f"no such --data file: {path}")
    if path.suffix in (".jsonl", ".json"):
        text = read_utf8(path)
        try:
            if path.suffix == ".jsonl":
                return [json.loads(line) for line in text.splitlines() if line.strip()]
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"--data {path}: not valid JSON ({e.msg}, at character {e.pos} of its line or "
                            "file)") from None
        return data["examples"] if isinstance(data, dict) and "examples" in data else data
    try:
        from datasets import load_dataset
    except ImportError:
        raise UserError(f"--data {path.name} needs the datasets package: pip install 'laserlm[data]'") from None

    kind = {".csv": "csv", ".parquet": "parquet"}.get(path.suffix)
    if kind is None:
        raise UserError(f"--data {path}: use a .jsonl, .json, .csv or .parquet file in the hub schema")
    return list(load_dataset(kind, data_files=str(path), split="train"))


def _hub_rows(source: str) -> list[dict]:
    try:
        from datasets import load_dataset
    except ImportError:
        raise UserError("hub-backed tasks need the datasets package: pip install 'laserlm[data]'") from None
    ref, splits = source.split(" ")[:2]
    hub_id, _, config = ref.partition(":")
    try:
        return [row for s in splits.split("+") for row in load_dataset(hub_id, config or None, split=s)]
    except Exception as e:  # datasets raises many types for an unreachable hub
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load {hub_id} from the hub ({reason}): pass --data PATH, a local copy") from None


def load_builtin(name: str, data: str | None = None) -> Task:
    spec = BUILTINS[name]
    if data:
        rows = _local_rows(Path(data).expanduser())
    elif spec.vendored:
        rows = _bigbench(spec.vendored)["examples"]
    else:
        rows = _hub_rows(spec.source)
    try:
        examples = spec.convert(rows)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"rows for {name} are not in the expected schema (missing or bad {e}); "
                        f"the source is {spec.source}") from None
    for i, ex in enumerate(examples):
        ex.index = i
    return Task(name, spec.kind, examples, description=spec.source)
