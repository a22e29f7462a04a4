"""Tasks: the paper's benchmarks by name, or custom .jsonl/.json/.csv files."""

from __future__ import annotations

from pathlib import Path

from ...errors import UserError
from .base import Example, Task, assign_splits
from .builtin import BUILTINS, load_builtin
from .custom import read_task_file

__all__ = ["BUILTINS", "Example", "Task", "assign_splits", "load_task", "read_task_file"]


def load_task(name: str, data: str | None = None, protocol: str = "paper") -> Task:
    """A built-in task name (with an optional local copy of its data) run under `protocol`, or a custom
    task file (whose rows carry their own prompts; the protocol does not apply)."""
    if name in BUILTINS:
        return load_builtin(name, data, protocol)
    if Path(name).suffix.lower() in (".jsonl", ".json", ".csv") or Path(name).exists():
        if data:
            raise UserError("--data is for built-in tasks; a custom task file holds its own rows")
        return read_task_file(name)
    raise UserError(f"unknown task {name!r}: use one of {', '.join(BUILTINS)}, or a .jsonl/.json/.csv file")
