"""--halving: the schedule and the survivors by hand, full-val rows identical to a plain search's, and a
SIGKILL mid-halving resumed to the same rows."""

from __future__ import annotations

import json

import pytest

from laserlm import Edit
from laserlm.cli.main import main
from laserlm.sweep.halving import halve, schedule

from conftest import kill_when


def test_schedule_by_hand():
    # 420 candidates (the paper's grid on 30 layers), 500 val rows, ETA 3: a fourth halving would leave
    # 31 rows in the first slice, under the 32 minimum.
    assert schedule(420, 500, 3) == [(63, 420), (126, 140), (252, 47), (500, 16)]
    assert schedule(54, 300, 2) == [(38, 54), (76, 27), (152, 14), (300, 7)]
    assert schedule(2, 500, 3) == [(500, 2)]  # too few candidates to halve: a plain search
    assert schedule(100, 40, 2) == [(40, 100)]  # too few rows
    with pytest.raises(ValueError):
        schedule(10, 100, 1)


def test_survivors_of_each_round_with_a_stub_objective():
    """Nine candidates; c8 is the best on all rows but looks weak on the first slice: halving drops it."""
    cands = [Edit("svd", "mlp_in", i, 0.5) for i in range(9)]
    truth = {c: i / 10 for i, c in enumerate(cands)}
    first_slice = {**truth, cands[8]: 0.05}  # c8 is unlucky on the first 32 rows
    seen = []

    def score(alive, rows):
        seen.append((rows, [c.layer for c in alive]))
        table = first_slice if rows == 32 else truth
        return {c: {"top1": table[c]} for c in alive}

    plan = schedule(9, 128, 3)
    assert plan == [(32, 9), (64, 3), (128, 1)]
    last = halve(cands, plan, score, "top1")
    assert seen == [(32, list(range(9))), (64, [7, 6, 5])]
    assert [c.layer for c in last] == [7]
    lossy = halve(cands, plan, lambda alive, rows: {c: {"logloss": truth[c]} for c in alive}, "logloss")
    assert [c.layer for c in lossy] == [0]  # a loss keeps the smallest


def _argv(folder, task, out, *extra):
    return ["search", str(folder), "-t", str(task), "--types", "mlp_in,mlp_out,attn_o", "--layers", "all",
            "--rhos", "0.9,0.6,0.3,0.1,k=2,k=1", "--no-svd-cache", "--halving", "2", "--select", "paper", "-o", str(out), *extra]


def _by_key(path):
    return {r["key"]: (r["edits"], r["n"], r["metrics"]) for r in map(json.loads, path.read_text().splitlines())}


def test_halving_rows_match_a_plain_search_and_survive_sigkill(tiny_with_tokenizer, task_file, tmp_path):
    plain, full, killed = tmp_path / "plain", tmp_path / "full", tmp_path / "killed"
    assert main(_argv(tiny_with_tokenizer, task_file, plain)[:-4] + ["-o", str(plain)]) == 0
    assert main(_argv(tiny_with_tokenizer, task_file, full)) == 0
    halved, every = _by_key(full / "results.jsonl"), _by_key(plain / "results.jsonl")
    # 54 candidates on 300 val rows: 54 on 38, 27 on 76, 14 on 152, then 7 on all 300 rows (+ the base row)
    assert len(halved) == 1 + 7 and all(every[k] == v for k, v in halved.items())
    partial = _by_key(full / "halving.jsonl")
    assert sorted(n for _, n, _ in partial.values()) == sorted([38] * 55 + [76] * 28 + [152] * 15)
    best = json.loads((full / "best.json").read_text())
    assert best["best"]["val"] == max(m["top1"] for e, _, m in halved.values() if e)
    assert "## Successive halving" in (full / "report.md").read_text()

    kill_when(_argv(tiny_with_tokenizer, task_file, killed), killed / "halving.jsonl", 60)  # in the second round
    assert not (killed / "best.json").exists()
    assert main(_argv(tiny_with_tokenizer, task_file, killed)) == 0
    assert _by_key(killed / "halving.jsonl") == partial
    assert _by_key(killed / "results.jsonl") == halved


@pytest.mark.parametrize("extra, message", [
    (["--halving", "1"], "ETA must be at least 2"),
    (["--halving", "--backend", "ray"], "--halving runs here"),
])
def test_bad_halving_is_refused(tiny_with_tokenizer, task_file, tmp_path, capsys, extra, message):
    argv = ["search", str(tiny_with_tokenizer), "-t", str(task_file), "-o", str(tmp_path / "o"), *extra]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code == 2 and message in capsys.readouterr().err
