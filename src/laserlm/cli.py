"""The `laser` command. Heavy imports (torch, transformers) happen inside each command, not at start-up."""

from __future__ import annotations

import argparse
import sys
import textwrap

from .errors import UserError

SVD_HELP = (
    "exact: torch.linalg.svd once per matrix, cached on disk by content hash (default). "
    "randomized: torch.svd_lowrank with k+10 oversampling and 4 power iterations, not cached on disk; "
    "faster on very large matrices, but approximate: the rank-k result's error exceeds the optimal "
    "sigma_(k+1) by a factor that is usually within a few percent and grows when the spectrum decays "
    "slowly (Halko, Martinsson & Tropp 2011); results vary with the random seed. Only for svd edits."
)


class _Parser(argparse.ArgumentParser):
    """Usage errors become one line and exit code 2, like every other bad input."""

    def error(self, message: str):
        raise UserError(f"{message} (see '{self.prog} --help')")


def _formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32, width=100)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="hub id, local HF folder, .gguf file, or 'demo'")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="weights dtype (default float32); SVDs are computed in float32 or better anyway")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--revision", help="hub revision (branch, tag or commit) for hub ids")
    p.add_argument("--device-map", metavar="MAP",
                   help="'auto' spreads a model larger than one device over GPUs and CPU (accelerate); "
                        "each SVD runs on its matrix's own device")
    p.add_argument("--module-pattern", action="append", metavar="[TYPE=]PATTERN",
                   help="address matrices by module name, e.g. 'fc1=blocks.{layer}.mlp.fc1' "
                        "(repeatable; TYPE defaults to the last name component)")


def add_edit_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("-e", "--edit", action="append", required=required, default=[], metavar="EDIT",
                   help="[METHOD/]TYPE:LAYER:AMOUNT, repeatable. METHOD: svd (default), bottom, prune, zero, mp. "
                        "TYPE: mlp_in, mlp_up, mlp_out, attn_q, attn_k, attn_v, attn_qkv, attn_o, or a group "
                        "mlp, attn, all. LAYER: 7, 20-27, 3,5,9 or all. AMOUNT: rho in (0,1] (rank kept = "
                        "max(1, floor(rho*min(m,n)))) or k=K")
    add_svd_args(p)


def add_svd_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--svd", choices=["exact", "randomized"], default="exact", help=SVD_HELP)
    p.add_argument("--no-svd-cache", action="store_true", help="do not read or write the on-disk SVD cache")


def load_from_args(args):
    from .models import load_model

    return load_model(args.model, dtype=args.dtype, device=args.device, revision=args.revision,
                      device_map=args.device_map)


def svd_cache_from_args(args):
    from .svd import SVDCache, default_cache, set_default_cache

    if args.svd == "exact" and not args.no_svd_cache:
        return default_cache()
    cache = SVDCache(disk=None if args.no_svd_cache or args.svd == "randomized" else "default", mode=args.svd)
    set_default_cache(cache)
    return cache


def build_parser() -> argparse.ArgumentParser:
    from . import commands

    parser = _Parser(prog="laser", formatter_class=_formatter,
                     description="LASER: layer-selective rank reduction of transformer models.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"laserlm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for name, (register, summary, example) in commands.COMMANDS.items():
        p = sub.add_parser(name, help=summary, description=summary, formatter_class=_formatter,
                           epilog="example:\n" + textwrap.indent(example.strip(), "  "))
        register(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.run(args) or 0
    except UserError as e:
        print(f"laser: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("laser: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    sys.exit(main())
