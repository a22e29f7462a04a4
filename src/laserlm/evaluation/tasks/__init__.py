"""Tasks: the paper's benchmarks by name, or custom .jsonl/.json/.csv files."""

from __future__ import annotations

from pathlib import Path

from ...errors import UserError
from .base import Example, Task, assign_splits
from .builtin import BUILTINS, load_builtin
from .custom import read_task_file

__all__ = ["BUILTINS", "Example", "Task", "assign_splits", "load_task", "read_task_file"]


def load_task(name: str, data: str | None = None, protocol: str = "paper", lm_eval_include: str | None = None,
              num_fewshot: int | None = None, tokenizer=None) -> Task:
    """A built-in task name (with an optional local copy of its data) run under `protocol`, a harness task
    `lm-eval:NAME` (found among lm-eval's tasks or in `lm_eval_include`), or a custom task file (whose rows
    carry their own prompts; the protocol does not apply). `num_fewshot` and `tokenizer` (whose chat template
    lm-eval then applies) are for harness tasks."""
    if name.startswith("lm-eval:"):
        from ..harness import harness_task

        if data:
            raise UserError("a local data file is for built-in tasks; an lm-eval task names its own data in its YAML")
        return harness_task(name, lm_eval_include, num_fewshot or 0, tokenizer)
    if num_fewshot:
        raise UserError(f"few-shot examples are drawn by lm-eval for its own tasks; {name} is not one (lm-eval:NAME)")
    if name in BUILTINS:
        return load_builtin(name, data, protocol)
    if Path(name).suffix.lower() in (".jsonl", ".json", ".csv") or Path(name).exists():
        if data:
            raise UserError("a local data file is for built-in tasks; a custom task file holds its own rows")
        return read_task_file(name)
    raise UserError(f"unknown task {name!r}: use one of {', '.join(BUILTINS)}, or a .jsonl/.json/.csv file")
