"""`laser reproduce`: one resumable search per benchmark under the paper protocol, and table1.md."""

from __future__ import annotations

import json

from laserlm.analysis.table1 import paper_numbers, table1
from laserlm.cli.main import main

from conftest import cloze_rows


def test_reproduce_writes_table1_and_resumes(tiny_with_tokenizer, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"question": r["prompt"], "answer": r["answer"]} for r in cloze_rows(60, seed=2)]
    (data / "hotpotqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "t1"
    argv = ["reproduce", str(tiny_with_tokenizer), "--benchmarks", "hotpotqa,bb_epistemic,fever", "--data-dir",
            str(data), "--layers", "1-2", "--rhos", "0.5,0.1", "--limit", "20", "--no-svd-cache", "-o", str(out)]
    assert main(argv) == 0
    text = (out / "table1.md").read_text()
    assert "| hotpotqa | gen01_paper | 12 / 20 |" in text and "| bb_epistemic | acc | 20 / 20 |" in text
    assert "fever | skipped" in text  # a hub benchmark without data: the others still run
    best = json.loads((out / "bb_epistemic" / "best.json").read_text())
    assert best["metric"] == "acc" and set(best["base"]["test_metrics"]) == {"acc", "logloss", "choice_logloss"}
    run = json.loads((out / "hotpotqa" / "run.json").read_text())
    assert run["protocol"] == "paper" and run["metrics"] == ["gen01_paper", "logloss", "top1"]
    before = {p: (out / p / "results.jsonl").read_text() for p in ("hotpotqa", "bb_epistemic")}
    assert main(argv) == 0  # resumes: nothing is evaluated again
    assert {p: (out / p / "results.jsonl").read_text() for p in before} == before
    assert "swept 0 candidates" in capsys.readouterr().out


def test_paper_numbers_sit_beside_ours():
    assert paper_numbers("EleutherAI/gpt-j-6b")["counterfact"]["laser_acc"] == 24.0
    assert paper_numbers("/models/Llama-2-7b-hf")["bb_epistemic"]["base_acc"] == 44.8
    assert paper_numbers("demo") == {}
    result = {"metric": "top1", "base": {"test": 0.131, "test_metrics": {"logloss": 5.0}},
              "best": {"test": 0.25, "edits": [{"method": "svd", "type": "mlp_in", "layer": 27, "amount": 0.01}],
                       "test_metrics": {"logloss": 4.5}}, "n_val": 10, "n_test": 40}
    text = table1("EleutherAI/gpt-j-6b", {"counterfact": result}, {}, 1.0)
    assert "| 13.1 | 25.0 | 5.000 | 4.500 | `mlp_in:27:0.01` | 13.1 | 24 | +1.0 |" in text
