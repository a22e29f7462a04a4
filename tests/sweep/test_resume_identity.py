"""A run folder is for one model, task, row set and numerics: dtype, SVD mode and device type are part of
every key and of the manifest, so a rerun that changes them is refused, never mixed in."""

from __future__ import annotations

import json

import pytest

from laserlm.analysis.report import write_report
from laserlm.cli.main import main
from laserlm.sweep.store import ResultStore

from conftest import cloze_rows


@pytest.fixture
def run(tmp_path, tiny_with_tokenizer):
    task = tmp_path / "rows.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in cloze_rows(40)))
    out = tmp_path / "run"
    argv = ["search", str(tiny_with_tokenizer), "-t", str(task), "--layers", "1-2", "--rhos", "0.5",
            "--no-svd-cache", "-o", str(out)]
    assert main(argv) == 0
    return argv, out


@pytest.mark.parametrize("change, field", [(["--dtype", "bfloat16"], "dtype"), (["--svd", "randomized"], "svd")])
def test_a_rerun_with_other_numerics_is_refused(run, capsys, change, field):
    argv, out = run
    before = (out / "results.jsonl").read_text()
    assert main(argv + change) == 2
    err = capsys.readouterr().err
    assert f"another {field}" in err and err.count("\n") == 1
    assert (out / "results.jsonl").read_text() == before


def test_keys_and_manifest_carry_the_numerics(run):
    _, out = run
    manifest = json.loads((out / "run.json").read_text())
    assert (manifest["dtype"], manifest["svd"], manifest["device"]) == ("float32", "exact", "cpu")
    assert main(run[0]) == 0  # the same settings resume: nothing new
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 1 + 4 and len({r["key"] for r in rows}) == 5


def test_report_never_writes_the_store(run):
    _, out = run
    path = out / "results.jsonl"
    torn = path.read_bytes() + b'{"key": "abc", "edits": [{"meth'  # a search writing its next row right now
    path.write_bytes(torn)
    write_report(out)
    assert path.read_bytes() == torn
    assert len(ResultStore(path, read_only=True).rows) == 5
    ResultStore(path)  # the search itself, reopening, cuts the torn tail
    assert path.read_bytes() == torn[: torn.rfind(b"\n") + 1]
