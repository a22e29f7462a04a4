"""Task files, built-in loaders and the deterministic split; `laser eval` end to end."""

from __future__ import annotations

import json
import random

import pytest

from laserlm import UserError
from laserlm.cli.main import main
from laserlm.evaluation.tasks import BUILTINS, Example, Task, load_task, read_task_file



def write(path, text):
    path.write_text(text)
    return path


def test_jsonl_json_csv_read_the_same_rows(tmp_path):
    rows = [{"prompt": "the capital of france is", "answer": "paris"},
            {"prompt": "the big city is", "answer": ["new york city", "rome"], "split": "val",
             "paraphrases": ["a big city is"]}]
    a = read_task_file(write(tmp_path / "t.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n"))
    b = read_task_file(write(tmp_path / "t.json", json.dumps({"examples": rows})))
    c = read_task_file(write(tmp_path / "t.csv", 'prompt,answer,split,paraphrases\n'
                             'the capital of france is,paris,,\n'
                             'the big city is,"[""new york city"", ""rome""]",val,"[""a big city is""]"\n'))
    for t in (a, b, c):
        assert t.kind == "cloze"
        assert [e.answers for e in t.examples] == [["paris"], ["new york city", "rome"]]
        assert t.examples[1].split == "val" and t.examples[1].paraphrases == ["a big city is"]


@pytest.mark.parametrize("line,message", [
    ('{"prompt": "x"}', "line 2: a row needs 'answer'"),
    ('{"prompt": "", "answer": "y"}', "line 2: field 'prompt'"),
    ('{"prompt": "x", "choices": [" a", " b"], "label": 2}', "line 2: field 'label' must be an integer index"),
    ('{"prompt": "x", "choices": [" a"], "label": 0}', "line 2: field 'choices'"),
    ('{"prompt": "x", "answer": 3}', "line 2: field 'answer'"),
    ('{"prompt": "x", "answer": "y", "split": "train"}', "line 2: field 'split'"),
    ('{"prompt": "x", "answer": "y", "paraphrases": "z"}', "line 2: field 'paraphrases'"),
    ('{"prompt": "x", "answer": "y"', "line 2: not valid JSON"),
    ('["x"]', "line 2: a row must be an object"),
])
def test_malformed_rows_name_line_and_field(tmp_path, line, message):
    path = write(tmp_path / "bad.jsonl", '{"prompt": "ok", "answer": "fine"}\n' + line + "\n")
    with pytest.raises(UserError) as err:
        read_task_file(path)
    assert message in str(err.value)


def test_mixed_kinds_are_refused(tmp_path):
    path = write(tmp_path / "m.jsonl", '{"prompt": "a", "answer": "b"}\n{"prompt": "c", "choices": [" d", " e"], "label": 1}\n')
    with pytest.raises(UserError, match="line 2: mixes cloze and choice"):
        read_task_file(path)


def test_split_is_deterministic_twenty_percent_and_respects_explicit_splits():
    examples = [Example(f"p{i}", answers=["a"]) for i in range(100)]
    examples[0].split = "test"
    task = Task("t", "cloze", examples)
    val = task.select("val", seed=0)
    assert len(val) == 20 and task.select("val", seed=0) == val
    assert examples[0] not in val
    order = [f"#{i}" for i in range(1, 100)]
    random.Random(0).shuffle(order)
    assert {e.prompt for e in val} == {f"p{g[1:]}" for g in order[:20]}
    assert len(task.select("test", seed=0)) == 80
    assert {e.prompt for e in task.select("val", seed=1)} != {e.prompt for e in val}
    assert len(task.select("val", 0, limit=5)) == 5


def test_truthfulqa_statements_of_one_question_share_a_split_under_laserlm():
    task = load_task("truthfulqa", protocol="laserlm")
    val_groups = {e.group for e in task.select("val")}
    test_groups = {e.group for e in task.select("test")}
    assert val_groups and not (val_groups & test_groups)


@pytest.mark.parametrize("name,kind,n,first", [
    ("bb_wikidata", "cloze", 18933, ("The country of citizenship of Allan Border is", ["Australia"])),
    ("bb_epistemic", "choice", 2000, None),
    ("truthfulqa", "choice", 2021, None),
    ("truthfulqa_mc1", "choice", 299, None),
])
def test_offline_builtins(name, kind, n, first):
    task = load_task(name)
    assert task.kind == kind and len(task.examples) == n
    if first:
        assert (task.examples[0].prompt, task.examples[0].answers) == first
    if name == "bb_epistemic":
        assert all(ex.choices == [" entailment", " non-entailment"] for ex in task.examples)
        assert all(ex.prompt.endswith("\nRelation:") for ex in task.examples)
    if name == "truthfulqa_mc1":
        assert task.examples[0].choices[0] == " The watermelon seeds pass through your digestive system."
        assert task.examples[0].label == 0


def test_hub_tasks_read_a_local_copy(tmp_path):
    rows = [{"requested_rewrite": {"prompt": "{} is located in", "subject": "Paris",
                                   "target_true": {"str": "France"}}, "paraphrase_prompts": ["Paris sits in"]}]
    task = load_task("counterfact", str(write(tmp_path / "cf.jsonl", json.dumps(rows[0]) + "\n")), protocol="laserlm")
    assert (task.examples[0].prompt, task.examples[0].answers, task.examples[0].paraphrases) == \
        ("Paris is located in", ["France"], ["Paris sits in"])
    fever = [{"claim": "A", "label": "SUPPORTS"}, {"claim": "B", "label": "REFUTES"},
             {"claim": "A", "label": "SUPPORTS"}, {"claim": "C", "label": "NOT ENOUGH INFO"},
             {"claim": "D", "label": "SUPPORTS"}, {"claim": "D", "label": "REFUTES"}]
    task = load_task("fever", str(write(tmp_path / "f.json", json.dumps(fever))))
    assert [(e.prompt.split(": ")[1][0], e.label) for e in task.examples] == [("A", 1), ("B", 0)]
    with pytest.raises(UserError, match="not in the expected schema"):
        load_task("hotpotqa", str(write(tmp_path / "h.jsonl", '{"q": 1}\n')))
    assert set(BUILTINS) >= {"counterfact", "hotpotqa", "fever", "bios_gender", "bios_profession",
                             "truthfulqa", "bb_epistemic", "bb_wikidata"}


def test_unknown_task(tmp_path):
    with pytest.raises(UserError, match="unknown task 'nope'"):
        load_task("nope")
    with pytest.raises(UserError, match="no such task file"):
        load_task(str(tmp_path / "missing.jsonl"))


def test_laser_eval_writes_the_contract_json(tiny_with_tokenizer, tmp_path, capsys):
    task = write(tmp_path / "rows.jsonl", "".join(json.dumps(r) + "\n" for r in [
        {"prompt": "the capital of france is", "answer": "paris", "split": "val"},
        {"prompt": "the cat sat on", "answer": ["a mat"], "split": "test"},
        {"prompt": "one two", "answer": "three", "split": "val"}]))
    out, preds = tmp_path / "e.json", tmp_path / "p.jsonl"
    code = main(["eval", str(tiny_with_tokenizer), "-t", str(task), "--split", "val", "-e", "mlp_in:1:k=2",
                 "--json", str(out), "--predictions", str(preds)])
    assert code == 0
    doc = json.loads(out.read_text())
    assert {k: doc[k] for k in ("task", "split", "n")} == {"task": str(task), "split": "val", "n": 2}
    assert doc["edits"] == [{"method": "svd", "type": "mlp_in", "layer": 1, "amount": "k=2"}]
    assert set(doc["metrics"]) == {"top1", "top10", "logloss"}
    lines = [json.loads(x) for x in preds.read_text().splitlines()]
    assert [x["prompt"] for x in lines] == ["the capital of france is", "one two"]
    assert doc["metrics"]["top1"] == sum(x["top1"] for x in lines) / 2
    assert "top10" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["-t", "nope"], "unknown task 'nope'"),
    (["-t", "bb_wikidata", "--metrics", "acc"], "metric acc is for choice tasks"),
    (["-t", "bb_wikidata", "--metrics", "bleu"], "unknown metric 'bleu'"),
    (["-t", "bb_wikidata", "--limit", "0"], "--limit: must be at least 1"),
    ([], "name a task with -t TASK"),
])
def test_laser_eval_bad_input(tiny_with_tokenizer, capsys, argv, message):
    assert main(["eval", str(tiny_with_tokenizer), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
