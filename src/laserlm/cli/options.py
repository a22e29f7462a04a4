"""Options and helpers shared by the subcommands. Heavy imports (torch, transformers) happen inside functions."""

from __future__ import annotations

import argparse
import sys

from ..errors import UserError

SVD_HELP = (
    "exact: torch.linalg.svd once per matrix, cached on disk by content hash (default). "
    "randomized: torch.svd_lowrank with k+10 oversampling and 4 power iterations, not cached on disk; "
    "faster on very large matrices, but approximate: the rank-k result's error exceeds the optimal "
    "sigma_(k+1) by a factor that is usually within a few percent and grows when the spectrum decays "
    "slowly (Halko, Martinsson & Tropp 2011); results vary with the random seed. Only svd edits use it: "
    "bottom, mp and the analyses need the whole spectrum and always take the exact SVD. "
    "authors: the authors' own call, torch.svd_lowrank(W, q=k, niter=2) in float32, no oversampling, seeded by "
    "--seed, with their rank rule int(min(m,n) * (10 - rate) * 0.1), one less than ours when rho*min(m,n) is whole: "
    "to reproduce their edits, seed noise included (laser analyze seeds measures it)"
)


def int_at_least(low: int, name: str = ""):
    """An argparse type: an integer of at least `low` (argparse turns the error into one line)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{name + ' ' if name else ''}must be at least {low}, not {value}")
        return value
    return parse


positive_int = int_at_least(1)


def parse_rhos(text: str, methods: list[str]) -> list:
    """--rhos: a comma list of amounts (see core.edits.parse_amounts)."""
    from ..core.edits import parse_amounts as parse

    return parse([part for part in text.split(",") if part.strip()], methods, f"--rhos {text}")


def non_negative_float(text: str) -> float:
    """An argparse type: a number of at least 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, not {text}")
    return value


def output_file(path: str | None, flag: str) -> None:
    """Refuse, before any work, an output file that could not be written at the end."""
    from pathlib import Path

    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{flag} {path} is a folder: name a file")
    if not p.parent.is_dir():
        raise UserError(f"{flag} {path}: the folder {p.parent} does not exist; create it first")


def read_text(path: str, flag: str) -> str:
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{flag} {path}: no such file")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{flag} {path} is not UTF-8 text (byte {e.start}): convert it first") from None


SHIPPED_TEXT = "declaration_of_independence.txt"  # public domain, in laserlm/data


def text_or_shipped(path: str | None, flag: str) -> str:
    """The text of file `path` (`flag` names it in refusals), or without one the shipped SHIPPED_TEXT."""
    if path:
        return read_text(path, flag)
    from importlib import resources

    return (resources.files("laserlm") / "data" / SHIPPED_TEXT).read_text(encoding="utf-8")


def output_dir(path: str | None, flag: str = "-o") -> None:
    from pathlib import Path

    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise UserError(f"{flag} {path} is an existing file: name a folder")


class Parser(argparse.ArgumentParser):
    """Usage errors become one line and exit code 2, like every other bad input."""

    def error(self, message: str):
        raise UserError(f"{message} (see '{self.prog} --help')")


def formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32, width=100)


def add_model_args(p: argparse.ArgumentParser, optional: bool = False) -> None:
    p.add_argument("model", metavar="MODEL", nargs="?" if optional else None,
                   help="hub id, local HF folder, .gguf file, or 'demo'" + (
                       " (with --from: default the run's own model)" if optional else ""))
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                   help="weights dtype. auto (default): the checkpoint's own dtype on a GPU (bfloat16 for a GGUF "
                        "file), float32 on the CPU, where half-precision matmuls are slow. SVDs are computed in "
                        "float32 or better whatever this is")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let a hub model or folder run the modeling code it ships (transformers' trust_remote_code; "
                        "off by default: read that code first)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto: CUDA when available (default auto)")
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
                        "mlp, attn, all; on a mixture of experts every expert is reduced, TYPE@E names one "
                        "(mlp_out@3, mlp_in@shared). LAYER: 7, 20-27, 3,5,9 or all. AMOUNT: rho in (0,1] (rank kept "
                        "= max(1, floor(rho*min(m,n)))) or k=K. Data-aware methods: whiten/ (SVD-LLM) and asvd/ "
                        "(ASVD), calibrated by --calibration")
    add_svd_args(p)
    add_calibration_args(p)


def add_calibration_args(p) -> None:
    p.add_argument("--calibration", metavar="TASK|FILE",
                   help="what whiten/ and asvd/ edits learn their inputs' statistics on: a UTF-8 text file, or a task's "
                        "val rows (the run's own -t: those past the first --limit, which it scores) (default: the "
                        "shipped calibration text, the Python tutorial and FAQ, ~100k tokens). Gathered in one pass of "
                        "the unedited model and cached by model, text and dtype")
    p.add_argument("--calibration-tokens", type=positive_int, metavar="N",
                   help="calibrate on the first N tokens only (default: all of the calibration set)")


def needs_calibration(edits=(), methods=()) -> bool:
    from ..core.edits import parse_edit
    from ..core.methods import get_method

    names = list(methods) + [parse_edit(e).method if isinstance(e, str) else e.method for e in edits]
    return any(get_method(m).needs_stats for m in names)


def calibrate_from_args(args, loaded, layout, edits, skip_rows: int = 0) -> dict:
    """Gather (or read from the cache) what the data-aware edits among `edits` need; {} when none is. A task's
    val rows as calibration start after `skip_rows` (jobs.calibration_skip: those the run scores)."""
    from ..evaluation.calibration import calibrate

    if not needs_calibration(edits):
        return {}
    return calibrate(loaded.model, loaded.tokenizer, edits, source=getattr(args, "calibration", None),
                     max_tokens=getattr(args, "calibration_tokens", None), layout=layout, identity=loaded.identity,
                     disk=not getattr(args, "no_svd_cache", False), skip_rows=skip_rows)


def add_svd_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--svd", choices=["exact", "randomized", "authors"], default="exact", help=SVD_HELP)
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="seed of the random SVDs (--svd randomized or authors), reset before each matrix (default 0)")
    p.add_argument("--no-svd-cache", action="store_true", help="do not read or write the on-disk SVD cache")
    p.add_argument("--svd-cache-gb", type=float, metavar="GB",
                   help="bound the on-disk SVD cache, evicting the least recently used entries "
                        "(default $LASERLM_SVD_CACHE_GB, else 20 GiB or half the free disk, whichever is less: "
                        "enough for the paper's grid on a 7B model)")


def load_from_args(args):
    from ..models.loading import load_model

    return load_model(args.model, dtype=args.dtype, device=args.device, revision=args.revision,
                      device_map=args.device_map, trust_remote_code=getattr(args, "trust_remote_code", False))


def add_save_dtype(p) -> None:
    p.add_argument("--save-dtype", choices=["source", "float32", "float16", "bfloat16"], default="source",
                   help="dtype of the weights written: source (default) is the checkpoint's own (bf16 in, bf16 out; "
                        "bfloat16 for a GGUF file), whatever --dtype computed in")


def save_dtype(args, loaded):
    """The torch dtype --save-dtype names, `source` being the loaded checkpoint's own."""
    from ..models.loading import resolve_dtype

    if args.save_dtype == "source":
        return loaded.source_dtype or next(loaded.model.parameters()).dtype
    return resolve_dtype(args.save_dtype)


def svd_cache_from_args(args):
    from ..core.svd import SVDCache, default_cache, set_default_cache

    gb = getattr(args, "svd_cache_gb", None)
    if gb is not None and gb <= 0:
        raise UserError(f"--svd-cache-gb must be positive, not {gb}")
    if args.svd == "exact" and not args.no_svd_cache and gb is None:
        return default_cache()
    cache = SVDCache(disk=None if args.no_svd_cache else "default", mode=args.svd,
                     disk_max_bytes=None if gb is None else int(gb * (1 << 30)), seed=args.seed)
    set_default_cache(cache)
    return cache


def add_task_args(p, required: bool) -> None:
    from ..evaluation.tasks import BUILTINS

    table = "\n".join(f"  {n:16s} {b.kind:6s} {b.source}" for n, b in BUILTINS.items())
    p.description = (f"{p.description}\n\nbuilt-in tasks (prompts, rows and splits of each protocol in "
                     f"docs/protocols.md):\n{table}")
    p.add_argument("-t", "--task", metavar="TASK", required=required,
                   help="a built-in task (listed above), a .jsonl/.json/.csv file of cloze or choice rows, or "
                        "lm-eval:NAME, a multiple_choice or loglikelihood task of lm-evaluation-harness")
    p.add_argument("--lm-eval-include", metavar="DIR",
                   help="a folder of lm-eval task YAMLs (lm-eval's include_path), for local harness tasks")
    p.add_argument("--data", metavar="PATH", help="a local copy of a built-in task's data, in its hub schema")
    p.add_argument("--protocol", choices=["paper", "laserlm"], default="paper",
                   help="built-in tasks: 'paper' (default) runs the authors' prompts, rows, first-20%%-is-val split "
                        "and metrics; 'laserlm' keeps the prompts and rows but splits by --split-seed, keeps "
                        "related rows together, and reports gen01 with the prompt excluded")
    p.add_argument("--split-seed", type=int, default=0, metavar="S",
                   help="seed of the 80/20 test/val split of rows without a 'split', for custom tasks and "
                        "--protocol laserlm (default 0)")
    p.add_argument("--limit", type=positive_int, metavar="N", help="use only the first N rows of the split")
    p.add_argument("--num-fewshot", type=int_at_least(0), metavar="N",
                   help="lm-eval tasks: N few-shot examples before each prompt, drawn by lm-eval's own sampler "
                        "(default: 0 for -t lm-eval:NAME, the task's own for --lm-eval)")
    add_chat_arg(p)
    add_batch_args(p)


def add_chat_arg(p) -> None:
    p.add_argument("--chat-template", action="store_true",
                   help="prompt as an instruct model is used: each prompt is the user's turn of the tokenizer's chat "
                        "template and the answer is scored as the start of the assistant's turn (off by default: "
                        "the paper scored raw prompts); an error if the tokenizer has no template")


def select_rows(task, split: str, seed: int, limit: int | None, args, tokenizer) -> list:
    """The rows of a split, as --chat-template wants them: an lm-eval task's rendered by lm-eval itself (its few-shot
    examples and delimiters as it handles them), any other's by the tokenizer's template."""
    if not getattr(args, "chat_template", False):
        return task.select(split, seed, limit)
    if task.name.startswith("lm-eval:"):
        from ..evaluation.tasks import load_task

        task = load_task(task.name, None, "paper", getattr(args, "lm_eval_include", None),
                         getattr(args, "num_fewshot", None), tokenizer)
        return task.select(split, seed, limit)
    from ..evaluation.chat import chat_examples

    return chat_examples(tokenizer, task.select(split, seed, limit))


def add_batch_args(p) -> None:
    p.add_argument("--batch-size", type=positive_int, metavar="N",
                   help="rows per batch (a row is one sequence, or sequences sharing a prefix packed together; "
                        "default: automatic, by the --max-tokens budget)")
    p.add_argument("--max-tokens", type=positive_int, metavar="N",
                   help="tokens per batch, padding included (default 8192 on CPU, 65536 on GPU); lower it if "
                        "the activations of one batch do not fit")


def task_identity(task: str, data: str | None, protocol: str) -> str:
    """What a run's results are for: a built-in name (with its protocol), or a file by content hash."""
    import hashlib
    from pathlib import Path

    from ..evaluation.tasks import BUILTINS

    if task in BUILTINS and not data:
        return task if protocol == "paper" else f"{task} --protocol {protocol}"
    path = Path(data or task).expanduser()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else "?"
    name = task if task not in BUILTINS or protocol == "paper" else f"{task} --protocol {protocol}"
    return name + (f" --data {path.name}" if data else "") + f" ({digest})"


def lm_eval_include(args) -> str | None:
    from pathlib import Path

    if args.lm_eval_include and not Path(args.lm_eval_include).is_dir():
        raise UserError(f"--lm-eval-include {args.lm_eval_include} is not a folder")
    return args.lm_eval_include


def task_from_args(args):
    from ..errors import HubUnavailable
    from ..evaluation.tasks import load_task

    try:
        return load_task(args.task, args.data, args.protocol, lm_eval_include(args), getattr(args, "num_fewshot", None))
    except HubUnavailable as e:
        raise UserError(f"{e}: pass --data PATH, a local copy in the hub schema") from None


def fit_task(task, tokenizer) -> None:
    """Drop, once, the rows whose answer is too long for this model's tokenizer (HotPotQA), saying how many."""
    dropped = task.drop_long_answers(tokenizer)
    if dropped:
        print(f"laser: {task.name}: dropped {dropped} rows whose answer is over {task.max_answer_tokens} tokens",
              file=sys.stderr)


def task_metrics(task, names: list[str] | None, loaded, examples, also: str | None = None):
    """The user's metrics, else the task's (its protocol's); a masked LM skips generation metrics it cannot
    compute unless the user asked for them. `also` is a search's selection metric: it is added, and the
    generation metrics, which cost a generate() per candidate, are kept only if it is one of them."""
    from ..evaluation.metrics import METRICS, choose_metrics
    from ..evaluation.scoring import is_masked_lm

    chosen = list(names or task.metrics or [m.name for m in choose_metrics(task.kind, None, True)])
    if not names and is_masked_lm(loaded.model):
        chosen = [m for m in chosen if METRICS[m].needs != "generate"]
    if also:
        chosen = [m for m in chosen if METRICS[m].needs != "generate" or m == also]
        chosen += [] if also in chosen else [also]
    if not any(e.paraphrases for e in examples):
        chosen = [m for m in chosen if METRICS[m].needs != "paraphrases"] or chosen
    return choose_metrics(task.kind, chosen, True)


def scorer_for(loaded, args):
    from ..evaluation.scoring import Scorer

    return Scorer(loaded.model, loaded.tokenizer, batch_size=args.batch_size, max_tokens=args.max_tokens)


def print_metrics(title: str, metrics: dict[str, float]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("metric", "value")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}")
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(title)
    console.print(table)


def command_line(args) -> str:
    """The command as the user typed it (for model cards and reports)."""
    import shlex

    return "laser " + shlex.join(getattr(args, "argv", None) or sys.argv[1:])
