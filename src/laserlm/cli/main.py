"""The `laser` command: the parser, the table of subcommands, and the one place where errors become exit codes.

Heavy imports (torch, transformers) happen inside each subcommand, not at start-up.
"""

from __future__ import annotations

import sys
import textwrap

from ..errors import UserError
from . import analyze, apply, compress, evaluate, info, report, reproduce, search
from .options import Parser, formatter

# name: (module, summary). Each module has register(parser) and EXAMPLE.
COMMANDS = {
    "info": (info, info.register_info, "Show layers, canonical matrix types, shapes and parameter counts."),
    "apply": (apply, apply.register_apply,
              "Apply edits and save the model as an HF folder (dense or --factorized)."),
    "eval": (evaluate, evaluate.register_eval, "Evaluate a model on a task (edits applied for the evaluation only)."),
    "search": (search, search.register_search,
               "Sweep (type, layer, rho) on val, pick the best, report val and test."),
    "reproduce": (reproduce, reproduce.register_reproduce,
                  "The paper's protocol on each benchmark: a search each, and table1.md."),
    "compress": (compress, compress.register_compress,
                 "Stack reductions over many matrices while the val metric holds; write the factorized model."),
    "report": (report, report.register_report, "Regenerate report.md and plots of a search from its run folder."),
    "analyze": (analyze, analyze.register_analyze, "The paper's analyses: spectrum, perplexity, components."),
}


def build_parser() -> Parser:
    from .._version import __version__

    parser = Parser(prog="laser", formatter_class=formatter,
                    description="LASER: layer-selective rank reduction of transformer models.")
    parser.add_argument("--version", action="version", version=f"laserlm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    for name, (module, register, summary) in COMMANDS.items():
        p = sub.add_parser(name, help=summary, description=summary, formatter_class=formatter,
                           epilog="example:\n" + textwrap.indent(module.EXAMPLE.strip(), "  "))
        register(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # as typed, for model cards
        if args.command == "compress" and args.target is not None:
            from .compress_target import run_target

            args.run = run_target
        return args.run(args) or 0
    except UserError as e:
        print(f"laser: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("laser: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    sys.exit(main())
