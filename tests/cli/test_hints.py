"""Every hint names options its own command has.

- The library (core, models, evaluation, sweep, analysis) serves several commands, so its messages name no option
  but --device and --dtype, which every command that loads a model has (or name the command they are about:
  "laser eval --lm-eval").
- A command's own code (its `run` function, what it calls in its module, and the shared option helpers it calls)
  names only options of that command's parser: checked for every subcommand and every analysis.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from laserlm.cli.main import build_parser

SRC = Path(__file__).resolve().parents[2] / "src" / "laserlm"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
LIBRARY_FLAGS = {"--device", "--dtype"}
SHARED = ("options.py", "jobs.py")


def _text(node) -> str:
    return "".join(n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str))


def _raised(tree) -> list[str]:
    """The text of every UserError raised under `tree` (f-strings: their literal parts)."""
    return [_text(n.args[0]) for n in ast.walk(tree) if isinstance(n, ast.Call)
            and getattr(n.func, "id", None) == "UserError" and n.args]


def _unnamed(text: str, allowed: set[str]) -> list[str]:
    """Flags in `text` outside `allowed`, except those after "laser <command>" (a hint about another command)."""
    return [f for f in FLAG.findall(text) if f not in allowed and not re.search(r"laser \w+[^.:;]*" + re.escape(f), text)]


def test_library_messages_name_only_options_every_model_command_has():
    wrong = []
    for path in SRC.rglob("*.py"):
        if "cli" not in path.relative_to(SRC).parts:
            wrong += [f"{path.relative_to(SRC)}: {f} in {t[:80]!r}" for t in _raised(ast.parse(path.read_text()))
                      for f in _unnamed(t, LIBRARY_FLAGS)]
    assert not wrong, "\n".join(wrong)


def _functions(path: Path) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)}


def _closure(start: ast.FunctionDef, module: dict, shared: dict) -> list[ast.FunctionDef]:
    """`start` and every function of its module or of the shared option modules it names, transitively."""
    seen, todo, out = set(), [start], []
    while todo:
        fn = todo.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        out.append(fn)
        for n in ast.walk(fn):
            name = n.id if isinstance(n, ast.Name) else n.attr if isinstance(n, ast.Attribute) else None
            for table in (module, shared):
                if name in table:
                    todo.append(table[name])
    return out


def _commands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        nested = [a for a in p._actions if a.dest == "analysis"]
        yield from ((f"{name} {n}", q) for n, q in nested[0].choices.items()) if nested else [(name, p)]


@pytest.mark.parametrize("label, parser", list(_commands()), ids=lambda x: x if isinstance(x, str) else "")
def test_each_command_names_only_its_own_options(label, parser):
    run = parser.get_default("run")
    while run.__closure__ and run.__name__ == "checked":  # analyze wraps each run in an output check
        run = run.__closure__[0].cell_contents
    path = Path(run.__code__.co_filename)
    shared = {k: v for f in SHARED for k, v in _functions(SRC / "cli" / f).items()}
    options = {s for a in parser._actions for s in a.option_strings}
    fns = _closure(_functions(path)[run.__name__], _functions(path), shared)
    wrong = [f"{fn.name}: {f} in {t[:80]!r}" for fn in fns for t in _raised(fn) for f in _unnamed(t, options)]
    assert fns and not wrong, f"laser {label} can print hints naming options it does not have:\n" + "\n".join(wrong)
    if label != "report":
        assert LIBRARY_FLAGS <= options, f"laser {label} loads a model but lacks {LIBRARY_FLAGS - options}"


def test_offline_reproduce_names_its_own_data_option(tiny_with_tokenizer, tmp_path, capsys):
    from laserlm.cli.main import main

    assert main(["reproduce", str(tiny_with_tokenizer), "--benchmarks", "fever", "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "put fever.jsonl, a local copy in the hub schema, in --data-dir" in err and "--data PATH" not in err
    assert main(["eval", str(tiny_with_tokenizer), "-t", "fever"]) == 2
    assert "pass --data PATH, a local copy in the hub schema" in capsys.readouterr().err
