"""The paper's benchmarks, each with the prompt form of the original LASER code.

BIG-bench tasks and TruthfulQA read files vendored from bigbench==1.0.0 (Apache-2.0, see
data/bigbench/NOTICE) and work offline. The others load through `datasets` from the hub ids below, or
from `--data PATH`, a local copy in the same schema (.jsonl/.json rows, or .csv/.parquet).
"""

from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

from ...errors import HubUnavailable, UserError, first_line
from ..protocols import (PROTOCOLS, bios_gender_mlm, bios_gender_prompt, bios_profession_mlm, bios_profession_prompt,
                         counterfact_mlm, fever_mlm, fever_prompt, get_protocol, hotpot_prompt, truthful_mlm,
                         truthful_prompt)
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
    convert: Callable[[list[dict], str], list[Example]]  # (rows, protocol name) -> examples
    vendored: str | None = None

    def prompt(self, name: str) -> str:
        return PROTOCOLS[name]["paper"].template


def _bigbench(name: str) -> dict:
    path = resources.files("laserlm") / "data" / "bigbench" / f"{name}.json.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def tasksource_order(rows: list) -> list:
    """The rows in the order the authors read them: tasksource/bigbench's validation split, then its train split.

    Those splits are BIG-bench's own (bigbench/bbseqio/bigbench_bridge.py): the task's examples shuffled
    by `random.seed(42); random.shuffle`, the last max(20%, 16) of them validation, the rest train.
    """
    rows = list(rows)
    random.Random(42).shuffle(rows)
    n_val = max(int(0.2 * len(rows)), 16)
    return rows[len(rows) - n_val:] + rows[:len(rows) - n_val]


def _targets(r: dict) -> list[str]:
    t = r.get("target", r.get("targets"))
    return [x.strip() for x in ([t] if isinstance(t, str) else list(t))]


def _wikidata(rows, protocol) -> list[Example]:
    if "inputs" not in rows[0]:  # BIG-bench task.json rows: put them in tasksource's order
        rows = tasksource_order(rows)
    out = []
    for r in rows:
        targets = _targets(r)
        if len(targets) == 1:  # src/dataset_utils/bigbench.py:66-70: rows with exactly one target
            out.append(_bare(Example(r.get("inputs", r.get("input", "")).strip(), answers=targets), protocol))
    return out


def _bare(ex: Example, protocol: str) -> Example:
    """The authors' RoBERTa BigBench and HotPotQA scripts score "{prompt} {answer}", encoded without special
    tokens, with the answer's tokens masked (src/intervention_roberta_hotpot.py:126-172); their accuracy fills
    five masks after the prompt (gen01 for masked LMs)."""
    if protocol == "paper":
        ex.mlm_prompt, ex.mlm_bare = ex.prompt + " <mask>", True
    return ex


_EPISTEMIC_PREFIX = ("Identify the relation between the following premises and hypotheses, choosing from "
                     "the options 'entailment' or 'non-entailment'.\n")
_EPISTEMIC = ["entailment", "non-entailment"]


def _epistemic(rows, protocol) -> list[Example]:
    if "inputs" not in rows[0]:
        rows = tasksource_order(rows)
    out = []
    for r in rows:
        if "inputs" in r:  # tasksource schema: the prefix is already in the input
            prompt, target = r["inputs"].strip(), _targets(r)[0]
        else:
            prompt = f"{_EPISTEMIC_PREFIX}\n{r['input']}\nRelation:"
            target = next(k for k, v in r["target_scores"].items() if v == 1)
        out.append(_bare(Example(prompt, choices=[" " + n for n in _EPISTEMIC], label=_EPISTEMIC.index(target)),
                         protocol))
    return out


def _truthful_statements(rows, protocol) -> list[Example]:
    out = []
    for i, r in enumerate(rows):
        if "mc2_targets" in r:  # the hub schema (truthful_qa, multiple_choice)
            pairs = zip(r["mc2_targets"]["choices"], r["mc2_targets"]["labels"])
            question = r["question"]
        else:  # BIG-bench questions.json
            pairs = [(a, 1) for a in r["True answers"]] + [(a, 0) for a in r["False answers"]]
            question = r["Question"]
        out += [Example(truthful_prompt(question, a), choices=TF, label=int(y), group=f"q{i}",
                        mlm_prompt=truthful_mlm(question, a)) for a, y in pairs]
    return out


def _truthful_mc1(rows, protocol) -> list[Example]:
    prefix = _bigbench("truthful_qa_mc")["task_prefix"]
    out = []
    for r in rows:
        if "mc1_targets" in r:  # hub schema
            answers, labels, q = r["mc1_targets"]["choices"], r["mc1_targets"]["labels"], r["question"]
        else:
            answers, labels, q = list(r["target_scores"]), list(r["target_scores"].values()), r["input"]
        out.append(Example(f"{prefix}\nQ: {q}\nA:", choices=[" " + a for a in answers], label=labels.index(1)))
    return out


def _counterfact(rows, protocol) -> list[Example]:
    out = []
    for i, r in enumerate(rows):
        rw = r["requested_rewrite"]
        prompt, answer = rw["prompt"].format(rw["subject"]), rw["target_true"]["str"]
        paraphrases = list(r.get("paraphrase_prompts", []))
        if protocol == "paper":  # scripts/get_counterfact.py:42-44: every paraphrase is a row of its own
            out += [Example(p, answers=[answer], group=f"f{i}", mlm_prompt=counterfact_mlm(p))
                    for p in [prompt] + paraphrases]
        else:
            out.append(Example(prompt, answers=[answer], paraphrases=paraphrases, mlm_prompt=counterfact_mlm(prompt)))
    return out


def _hotpot(rows, protocol) -> list[Example]:
    return [_bare(Example(hotpot_prompt(r["question"]), answers=[r["answer"].strip()]), protocol) for r in rows]


def _consistent(rows) -> list[Example]:
    labels: dict[str, set] = {}
    for r in rows:
        y = r["label"]
        y = {"SUPPORTS": 1, "REFUTES": 0}.get(y, y) if isinstance(y, str) else y
        if y in (0, 1):
            labels.setdefault(r["claim"], set()).add(y)
    return [Example(fever_prompt(c), choices=TF, label=ys.pop(), mlm_prompt=fever_mlm(c))
            for c, ys in labels.items() if len(ys) == 1]


def _fever(rows, protocol) -> list[Example]:
    # src/dataset_utils/fever.py:12-63: claims whose annotations agree, once each, within paper_dev and
    # within paper_test separately; dev rows first.
    by_split: dict[str, list] = {}
    for r in rows:
        by_split.setdefault(r.get("_split", ""), []).append(r)
    return [ex for part in by_split.values() for ex in _consistent(part)]


def _bios_gender(rows, protocol) -> list[Example]:
    return [Example(bios_gender_prompt(r["hard_text"]), choices=[" male", " female"], label=int(r["gender"]),
                    mlm_prompt=bios_gender_mlm(r["hard_text"])) for r in rows]


def _bios_profession(rows, protocol) -> list[Example]:
    return [Example(bios_profession_prompt(r["hard_text"]), choices=[" " + p for p in PROFESSIONS],
                    label=PROFESSIONS.index(BIOS_PROFESSION_IDS[int(r["profession"])]),
                    mlm_prompt=bios_profession_mlm(r["hard_text"]))
            for r in rows if int(r["profession"]) in BIOS_PROFESSION_IDS]


BUILTINS: dict[str, Builtin] = {
    "bb_wikidata": Builtin("cloze", "vendored BIG-bench qa_wikidata (20,442 rows; 18,933 with one target)",
                           _wikidata, "qa_wikidata"),
    "bb_epistemic": Builtin("choice", "vendored BIG-bench epistemic_reasoning (2,000 rows)", _epistemic,
                            "epistemic_reasoning"),
    "truthfulqa": Builtin("choice", "vendored BIG-bench truthful_qa questions (299 questions -> 2,021 statements); "
                          "the paper's data is the hub's truthful_qa:multiple_choice validation (817 questions, "
                          "--data)", _truthful_statements, "truthful_qa_questions"),
    "truthfulqa_mc1": Builtin("choice", "vendored BIG-bench truthful_qa task_mc (mc1); --data takes the hub's "
                              "truthful_qa:multiple_choice rows", _truthful_mc1, "truthful_qa_mc"),
    "counterfact": Builtin("cloze", "azhx/counterfact train", _counterfact),
    "hotpotqa": Builtin("cloze", "hotpotqa/hotpot_qa:fullwiki train[:7405]+validation", _hotpot),
    "fever": Builtin("choice", "EleutherAI/fever:v1.0 paper_dev+paper_test", _fever),
    "bios_gender": Builtin("choice", "LabHC/bias_in_bios dev", _bios_gender),
    "bios_profession": Builtin("choice", "LabHC/bias_in_bios dev (8 professions)", _bios_profession),
}


def _local_rows(path: Path) -> list[dict]:
    if not path.exists():
        raise UserError(f"no such data file: {path}")
    if path.suffix in (".jsonl", ".json"):
        text = read_utf8(path)
        try:
            if path.suffix == ".jsonl":
                return [json.loads(line) for line in text.splitlines() if line.strip()]
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e.msg}, at character {e.pos} of its line or "
                            "file)") from None
        return data["examples"] if isinstance(data, dict) and "examples" in data else data
    try:
        from datasets import load_dataset
    except ImportError:
        raise UserError(f"{path.name} needs the datasets package: pip install 'laserlm[data]'") from None

    kind = {".csv": "csv", ".parquet": "parquet"}.get(path.suffix)
    if kind is None:
        raise UserError(f"{path}: use a .jsonl, .json, .csv or .parquet file in the hub schema")
    return list(load_dataset(kind, data_files=str(path), split="train"))


def _hub_rows(source: str) -> list[dict]:
    try:
        from datasets import load_dataset
    except ImportError:
        raise UserError("hub-backed tasks need the datasets package: pip install 'laserlm[data]'") from None
    ref, splits = source.split(" ")[:2]
    hub_id, _, config = ref.partition(":")
    try:
        # Each row remembers its hub split: FEVER deduplicates within a split.
        return [{**row, "_split": s} for s in splits.split("+") for row in load_dataset(hub_id, config or None, split=s)]
    except Exception as e:  # datasets raises many types for an unreachable hub
        reason = first_line(e)
        raise HubUnavailable(f"cannot load {hub_id} from the hub ({reason})") from None


def load_builtin(name: str, data: str | None = None, protocol: str = "paper") -> Task:
    spec = BUILTINS[name]
    proto = get_protocol(name, protocol)
    if data:
        rows = _local_rows(Path(data).expanduser())
    elif spec.vendored:
        rows = _bigbench(spec.vendored)["examples"]
    else:
        rows = _hub_rows(spec.source)
    try:
        examples = spec.convert(rows, protocol) if rows else []
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"rows for {name} are not in the expected schema (missing or bad {e}); "
                        f"the source is {spec.source}") from None
    for i, ex in enumerate(examples):
        ex.index = i
    return Task(name, spec.kind, examples, description=spec.source, split_rule=proto.split, primary=proto.primary,
                metrics=list(proto.metrics), gen_tokens=proto.gen_tokens, min_new_tokens=proto.min_new_tokens,
                max_answer_tokens=proto.max_answer_tokens, protocol=protocol)
