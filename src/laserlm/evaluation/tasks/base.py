"""Examples, tasks and the deterministic val/test split."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ...errors import UserError

VAL_FRACTION = 0.2
SPLITS = ("val", "test", "all")


@dataclass
class Example:
    """One row. Cloze rows have `answers`; choice rows have `choices` and `label`.

    `group` keeps rows that must share a split together (e.g. the statements made from one question).
    `mlm_prompt`, where a benchmark's protocol has one, is what masked LMs see instead of `prompt`; `mlm_bare`
    encodes it without the tokenizer's special tokens.
    """

    prompt: str
    answers: list[str] | None = None
    choices: list[str] | None = None
    label: int | None = None
    paraphrases: list[str] = field(default_factory=list)
    mlm_prompt: str | None = None  # for masked LMs: the prompt with "<mask>" where the answer goes
    mlm_bare: bool = False  # mlm_prompt is encoded without special tokens (the authors' BigBench/HotPotQA scripts)
    split: str | None = None
    group: str | None = None
    index: int = 0
    answer_prefix: str = " "  # what precedes a cloze answer: a space after a raw prompt, nothing after a chat header
    stop: list[str] | None = None  # generation metrics: the text is cut at the first of these (lm-eval's `until`)

    @property
    def kind(self) -> str:
        return "choice" if self.choices is not None else "cloze"


@dataclass
class Task:
    """Rows and how to run them: the split rule, the primary metric and the metrics reported.

    Built-in benchmarks take these from their protocol (protocols.py); custom files use the defaults.
    """

    name: str
    kind: str  # "cloze" or "choice"
    examples: list[Example]
    description: str = ""
    split_rule: str = "shuffle"  # or "head": the first 20% of rows in file order are val
    primary: str | None = None  # None: top1 for cloze, acc for choice
    metrics: list[str] | None = None  # None: the defaults for the kind
    gen_tokens: int = 10
    min_new_tokens: int = 0
    max_answer_tokens: int | None = None
    protocol: str | None = None

    def gen(self, tokens: int | None = None):
        """The generation settings of gen01/gen01_paper: `tokens` (--gen-tokens) or the protocol's count."""
        from ..generation import GenSettings

        return GenSettings(tokens or self.gen_tokens, self.min_new_tokens)

    def drop_long_answers(self, tokenizer) -> int:
        """Drop rows whose first answer is longer than `max_answer_tokens` tokens of this tokenizer, counted as
        the authors did (`len(tokenizer(answer).input_ids)`, special tokens included); returns how many."""
        if self.max_answer_tokens is None or tokenizer is None:
            return 0
        keep = [ex for ex in self.examples
                if ex.answers is None or len(tokenizer(ex.answers[0])["input_ids"]) <= self.max_answer_tokens]
        dropped = len(self.examples) - len(keep)
        self.examples = keep
        return dropped

    def select(self, split: str = "all", seed: int = 0, limit: int | None = None) -> list[Example]:
        """The rows of a split, in file order; at most `limit` of them.

        Rows with an explicit "split" keep it. With the "head" rule the others' first int(0.2 * n) rows
        are val (the authors' rule). With "shuffle" they are split by group (a row is its own group unless
        it says otherwise): the groups, in order of first appearance, are shuffled with
        `random.Random(seed)`, and the first round(0.2 * n_groups) of them go to val.
        """
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}: use val, test or all")
        assigned = (head_splits(self.examples) if self.split_rule == "head"
                    else assign_splits(self.examples, seed))
        rows = [ex for ex, s in zip(self.examples, assigned) if split == "all" or s == split]
        if limit is not None:
            if limit < 1:
                raise UserError(f"the row limit must be at least 1, not {limit}")
            rows = rows[:limit]
        if not rows:
            raise UserError(f"task {self.name} has no rows in split {split!r}: add rows to it, or leave their \"split\" "
                            "field out so that the seed splits them")
        return rows


def head_splits(examples: list[Example]) -> list[str]:
    """The authors' split: `val_size = int(0.2 * len(predictions))`, the first val_size rows are val."""
    free = [i for i, ex in enumerate(examples) if ex.split is None]
    val = set(free[: int(VAL_FRACTION * len(free))])
    return [ex.split or ("val" if i in val else "test") for i, ex in enumerate(examples)]


def assign_splits(examples: list[Example], seed: int) -> list[str]:
    groups: list[str] = []
    seen = set()
    for i, ex in enumerate(examples):
        g = ex.group if ex.group is not None else f"#{i}"
        if ex.split is None and g not in seen:
            seen.add(g)
            groups.append(g)
    order = list(groups)
    random.Random(seed).shuffle(order)
    val = set(order[: round(VAL_FRACTION * len(order))])
    return [
        ex.split or ("val" if (ex.group if ex.group is not None else f"#{i}") in val else "test")
        for i, ex in enumerate(examples)
    ]
