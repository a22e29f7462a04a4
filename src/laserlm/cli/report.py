"""`laser report`: regenerate report.md and the plots of a search from its run folder."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError


def run_report(args) -> int:
    from ..analysis.report import write_report

    run_dir = Path(args.run_dir)
    if not (run_dir / "results.jsonl").is_file():
        raise UserError(f"{run_dir} has no results.jsonl: give the -o folder of a laser search")
    print(f"report: {write_report(run_dir)}")
    return 0


def register_report(p):
    p.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by laser search")
    p.set_defaults(run=run_report)


EXAMPLE = "laser report runs/wiki"
