"""Custom task files (.jsonl, .json, .csv): cloze or choice rows, checked line by line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ...errors import UserError
from .base import Example, Task

CLOZE_FORM = '{"prompt": str, "answer": str | [str, ...]}'
CHOICE_FORM = '{"prompt": str, "choices": [str, ...], "label": int}'


def read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[:e.start].count(b"\n") + 1
        raise UserError(f"{path} line {line}: not UTF-8 text (byte {e.start}); save the file as UTF-8") from None


def _rows(path: Path) -> list[tuple[int, object]]:
    """(line number, raw row) pairs; CSV cells that hold JSON lists are decoded."""
    suffix = path.suffix.lower()
    text = read_utf8(path)
    if suffix == ".jsonl":
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    out.append((n, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path} line {n}: not valid JSON ({e.msg})") from None
        return out
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path} line {e.lineno}: not valid JSON ({e.msg})") from None
        if isinstance(data, dict) and isinstance(data.get("examples"), list):
            data = data["examples"]
        if not isinstance(data, list):
            raise UserError(f"{path}: a .json task file holds a list of rows (or {{\"examples\": [...]}})")
        return [(i + 1, row) for i, row in enumerate(data)]
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        out = []
        for n, row in enumerate(reader, 2):  # line 1 is the header
            row = {k: v for k, v in row.items() if k is not None and v not in (None, "")}
            for key in ("answer", "choices", "paraphrases", "label"):
                if key in row and (key != "answer" or row[key].lstrip().startswith("[")):
                    try:
                        row[key] = json.loads(row[key])
                    except json.JSONDecodeError:
                        raise UserError(f"{path} line {n}: field {key!r} is not valid JSON: {row[key]!r}") from None
            out.append((n, row))
        return out
    raise UserError(f"unknown task file type {path.suffix!r}: use .jsonl, .json or .csv")


def _str_list(value, what: str, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise UserError(f"{where}: field {what!r} must be a string or a non-empty list of strings")


def parse_row(raw, where: str, index: int) -> Example:
    if not isinstance(raw, dict):
        raise UserError(f"{where}: a row must be an object with 'prompt' and 'answer' or 'choices'")
    prompt = raw.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise UserError(f"{where}: field 'prompt' is missing or not a non-empty string")
    split = raw.get("split")
    if split is not None and split not in ("val", "test"):
        raise UserError(f"{where}: field 'split' must be \"val\" or \"test\", not {split!r}")
    group = raw.get("group")
    if group is not None and (isinstance(group, bool) or not isinstance(group, (str, int))):
        raise UserError(f"{where}: field 'group' must be a string (rows of one group share a split and are "
                        f"resampled together), not {group!r}")
    group = None if group is None or group == "" else str(group)
    paraphrases = raw.get("paraphrases", [])
    if not isinstance(paraphrases, list) or not all(isinstance(p, str) for p in paraphrases):
        raise UserError(f"{where}: field 'paraphrases' must be a list of strings")
    if "choices" in raw:
        choices = raw["choices"]
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise UserError(f"{where}: field 'choices' must be a list of at least 2 non-empty strings")
        label = raw.get("label")
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
            raise UserError(f"{where}: field 'label' must be an integer index into 'choices' (0-{len(choices) - 1})")
        return Example(prompt, choices=choices, label=label, paraphrases=paraphrases, split=split, index=index,
                       group=group)
    if "answer" not in raw:
        raise UserError(f"{where}: a row needs 'answer' (cloze: {CLOZE_FORM}) or 'choices' (choice: {CHOICE_FORM})")
    answers = _str_list(raw["answer"], "answer", where)
    if not all(a.strip() for a in answers):
        raise UserError(f"{where}: field 'answer' holds an empty string")
    return Example(prompt, answers=answers, paraphrases=paraphrases, split=split, index=index, group=group)


def read_task_file(path: str | Path) -> Task:
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"no such task file: {path}")
    rows = _rows(path)
    examples = [parse_row(raw, f"{path} line {n}", i) for i, (n, raw) in enumerate(rows)]
    if not examples:
        raise UserError(f"{path}: the task file has no rows")
    for (n, _), ex in zip(rows, examples):
        if ex.kind != examples[0].kind:
            raise UserError(f"{path} line {n}: mixes cloze and choice rows; one file holds one kind")
    return Task(path.stem, examples[0].kind, examples, description=f"custom task file {path}")
