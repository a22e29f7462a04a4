"""docs/cli.md, generated from the parser itself: every subcommand's `--help`, so the page cannot drift from the
command (tests/docs/test_docs.py compares them). Regenerate with `make docs` or `python -m laserlm.cli.reference`."""

from __future__ import annotations

import sys

HEADER = """# The command line

Generated from `laser COMMAND --help` by `make docs` (`python -m laserlm.cli.reference > docs/cli.md`); a test
fails when this page and the parser disagree. Every command exits 0 on success, 2 on bad input (one line on
stderr naming the problem and the fix, never a traceback) and 1 on an internal error.
"""


def _help(parser) -> str:
    return parser.format_help().rstrip()


def markdown() -> str:
    from .main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    parts = [HEADER, "```", _help(parser), "```", ""]
    for name, p in sub.choices.items():
        parts += [f"## laser {name}", "", "```", _help(p), "```", ""]
        nested = [a for a in p._actions if a.dest == "analysis"]
        for analysis, q in (nested[0].choices.items() if nested else []):
            parts += [f"### laser {name} {analysis}", "", "```", _help(q), "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    sys.stdout.write(markdown())
