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
    """

    prompt: str
    answers: list[str] | None = None
    choices: list[str] | None = None
    label: int | None = None
    paraphrases: list[str] = field(default_factory=list)
    split: str | None = None
    group: str | None = None
    index: int = 0

    @property
    def kind(self) -> str:
        return "choice" if self.choices is not None else "cloze"


@dataclass
class Task:
    name: str
    kind: str  # "cloze" or "choice"
    examples: list[Example]
    description: str = ""

    def select(self, split: str = "all", seed: int = 0, limit: int | None = None) -> list[Example]:
        """The rows of a split, in file order; at most `limit` of them.

        Rows with an explicit "split" keep it. The others are split by group (a row is its own group
        unless it says otherwise): the groups, in order of first appearance, are shuffled with
        `random.Random(seed)`, and the first round(0.2 * n_groups) of them go to val.
        """
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}: use val, test or all")
        assigned = assign_splits(self.examples, seed)
        rows = [ex for ex, s in zip(self.examples, assigned) if split == "all" or s == split]
        if limit is not None:
            if limit < 1:
                raise UserError(f"--limit must be at least 1, not {limit}")
            rows = rows[:limit]
        if not rows:
            raise UserError(f"task {self.name} has no rows in split {split!r}: use --split all or add rows")
        return rows


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
