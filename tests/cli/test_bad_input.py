"""Every bad input a new user tried gives one line on stderr and exit code 2, before any long work."""

from __future__ import annotations

import sys

import pytest

from laserlm.cli.main import main

from conftest import build_tiny


@pytest.fixture
def files(tmp_path, tiny_with_tokenizer):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "the cat", "answer": "sat"}\n' * 5)
    (tmp_path / "book.txt").write_text("the cat sat on the mat " * 20)
    (tmp_path / "latin1.jsonl").write_bytes('{"prompt": "caf\xe9", "answer": "x"}\n'.encode("latin-1"))
    (tmp_path / "rows.csv").write_text("prompt,answer\nthe cat,sat\n")
    (tmp_path / "bad.json").write_text('{"question": "x", "answer": [')
    (tmp_path / "a_file").write_text("not a folder")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama", ')
    bare = tmp_path / "bare"
    build_tiny("llama").save_pretrained(bare)  # weights, no tokenizer
    return {"model": str(tiny_with_tokenizer), "rows": str(rows), "dir": tmp_path}


CASES = {
    "--alpha above 1": (["search", "{model}", "-t", "{rows}", "--alpha", "2", "-o", "{dir}/r"], "--alpha 2: give a level"),
    "--alpha not a number": (["search", "{model}", "-t", "{rows}", "--alpha", "x", "-o", "{dir}/r"], "--alpha x"),
    "unknown --select": (["search", "{model}", "-t", "{rows}", "--select", "max", "-o", "{dir}/r"], "invalid choice"),
    "apply --from a folder without a run": (["apply", "--from", "{dir}", "-o", "{dir}/out"], "no best.json and run.json"),
    "apply without MODEL or --from": (["apply", "-e", "mlp_in:0:0.5", "-o", "{dir}/out"], "needs MODEL and -e EDIT"),
    "missing --text": (["eval", "{model}", "--text", "{dir}/nope.txt"], "no such file"),
    "--stride 0": (["eval", "{model}", "--text", "{dir}/book.txt", "--stride", "0"], "--stride: must be at least 1"),
    "negative --stride": (["eval", "{model}", "--text", "{dir}/book.txt", "--stride", "-3"], "must be at least 1"),
    "--gen-tokens 0": (["eval", "{model}", "-t", "{rows}", "--gen-tokens", "0"], "--gen-tokens: must be at least 1"),
    "--json in a missing folder": (["eval", "{model}", "-t", "{rows}", "--json", "{dir}/no/dir/out.json"],
                                   "does not exist"),
    "--predictions in a missing folder": (["eval", "{model}", "-t", "{rows}", "--predictions", "{dir}/no/p.jsonl"],
                                          "does not exist"),
    "invalid JSON in --data": (["eval", "{model}", "-t", "bb_wikidata", "--data", "{dir}/bad.json"], "bad.json"),
    "non-UTF-8 task file": (["eval", "{model}", "-t", "{dir}/latin1.jsonl"], "UTF-8"),
    "search -o an existing file": (["search", "{model}", "-t", "{rows}", "-o", "{dir}/a_file"], "existing file"),
    "apply -o an existing file": (["apply", "{model}", "-e", "mlp_in:0:0.5", "-o", "{dir}/a_file"], "existing file"),
    "--device cuda:7": (["eval", "{model}", "-t", "{rows}", "--device", "cuda:7"], "cuda:7"),
    "--device foo": (["eval", "{model}", "-t", "{rows}", "--device", "foo"], "unknown --device 'foo'"),
    "broken config.json": (["eval", "{dir}/broken", "-t", "{rows}"], "config.json cannot be read"),
    "--text without a tokenizer": (["eval", "{dir}/bare", "--text", "{dir}/book.txt"], "no tokenizer"),
    "unknown pattern placeholder": (["info", "{model}", "--module-pattern", "fc=model.layers.{{layer}}.mlp.{{blk}}"],
                                    "{blk}"),
    "--test-limit 0": (["search", "{model}", "-t", "{rows}", "--test-limit", "0", "-o", "{dir}/run"],
                       "--test-limit: must be at least 1"),
    "reproduce --rhos abc": (["reproduce", "{model}", "--rhos", "abc", "-o", "{dir}/t1"], "bad amount 'abc'"),
    "reproduce --rhos 2": (["reproduce", "{model}", "--rhos", "0.5,2", "-o", "{dir}/t1"], "outside (0, 1]"),
    "reproduce unknown benchmark": (["reproduce", "{model}", "--benchmarks", "nope", "-o", "{dir}/t1"],
                                    "unknown benchmark 'nope'"),
    "reproduce missing --data-dir": (["reproduce", "{model}", "--data-dir", "{dir}/none", "-o", "{dir}/t1"],
                                     "is not a folder"),
    "negative --gpus-per-worker": (["search", "{model}", "-t", "{rows}", "--backend", "ray", "--gpus-per-worker", "-1",
                                    "-o", "{dir}/run"], "--gpus-per-worker: must be at least 0"),
    "--halving 0": (["search", "{model}", "-t", "{rows}", "--halving", "0", "-o", "{dir}/run"],
                    "--halving: ETA must be at least 2, not 0"),
    "--budget 0": (["search", "{model}", "-t", "{rows}", "--prescreen", "mp", "--budget", "0", "-o", "{dir}/run"],
                   "--budget: must be at least 1"),
    "--objective missing file": (["search", "{model}", "--objective", "{dir}/none.py:f", "-o", "{dir}/run"],
                                 "no such file"),
    "--max-tokens 0": (["eval", "{model}", "-t", "{rows}", "--max-tokens", "0"], "--max-tokens: must be at least 1"),
    "unknown --metric": (["search", "{model}", "-t", "{rows}", "--metric", "bleu", "-o", "{dir}/run"],
                         "unknown metric 'bleu'"),
    "missing --lm-eval-include": (["eval", "{model}", "-t", "lm-eval:x", "--lm-eval-include", "{dir}/none"],
                                  "is not a folder"),
    "--svd-cache-gb 0": (["apply", "{model}", "-e", "mlp_in:0:0.5", "--svd-cache-gb", "0", "-o", "{dir}/x"],
                         "--svd-cache-gb must be positive"),
    "cluster0 method": (["apply", "{model}", "-e", "cluster0/mlp_in:0:0.5", "-o", "{dir}/x"], "clusterC (C = 2, 4, 8"),
    "--seed not a number": (["apply", "{model}", "-e", "mlp_in:0:0.5", "--svd", "authors", "--seed", "x", "-o",
                             "{dir}/x"], "--seed: invalid int value"),
    "compress negative --tolerance": (["compress", "{model}", "-t", "{rows}", "--tolerance", "-1", "-o", "{dir}/c"],
                                      "--tolerance: must be at least 0"),
    "compress without -t": (["compress", "{model}", "-o", "{dir}/c"], "-t/--task"),
    "compress -o an existing file": (["compress", "{model}", "-t", "{rows}", "-o", "{dir}/a_file"], "existing file"),
    "compress unknown method": (["compress", "{model}", "-t", "{rows}", "--methods", "svd,kmeans", "-o", "{dir}/c"],
                                "unknown edit method 'kmeans'"),
    "--grad-rows 0": (["search", "{model}", "-t", "{rows}", "--prescreen", "grad", "--budget", "2", "--grad-rows", "0",
                       "-o", "{dir}/run"], "--grad-rows: must be at least 1"),
    "seeds --seeds 0": (["analyze", "seeds", "{dir}", "--seeds", "0"], "--seeds: must be at least 1"),
    "seeds on a folder that is no run": (["analyze", "seeds", "{dir}"], "lacks run.json/best.json"),
    "reproduce unknown --grid": (["reproduce", "{model}", "--grid", "mine", "-o", "{dir}/t1"], "invalid choice: 'mine'"),
    "reproduce --prescreen without --budget": (["reproduce", "{model}", "--prescreen", "snr", "-o", "{dir}/t1"],
                                               "give both"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_exit_2(files, capsys, case):
    argv, message = CASES[case]
    argv = [a.format(**files) for a in argv]
    assert main(argv) == 2
    out = capsys.readouterr()
    assert message in out.err, out.err
    assert out.err.count("\n") == 1 and "Traceback" not in out.err


def test_csv_without_datasets_names_the_install(files, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets now raises ImportError
    assert main(["eval", files["model"], "-t", "bb_wikidata", "--data", str(files["dir"] / "rows.csv")]) == 2
    err = capsys.readouterr().err
    assert "pip install" in err and err.count("\n") == 1


def test_outputs_are_checked_before_the_evaluation(files, monkeypatch, capsys):
    import laserlm.cli.evaluate as ev

    monkeypatch.setattr(ev, "load_from_args", lambda args: pytest.fail("the model was loaded first"))
    assert main(["eval", files["model"], "-t", files["rows"], "--json", str(files["dir"] / "no" / "x.json")]) == 2


def test_through_the_laser_command(files):
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "laserlm", "eval", files["model"], "--device", "foo", "-t",
                           files["rows"]], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "unknown --device" in proc.stderr
    assert proc.stdout == ""  # nothing printed before the refusal
