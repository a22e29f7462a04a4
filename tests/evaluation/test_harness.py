"""lm-evaluation-harness against our scorer: two independent implementations of one evaluation.

Local YAML tasks over a local JSONL file (no hub): a multiple_choice task and a loglikelihood (cloze) one.
lm-eval's `acc` must equal `laser eval`'s `acc` (choice) and `top1` (single-token cloze: lm-eval's acc is
"the target is the greedy continuation") on the same rows written in our custom format, with and without an
edit. Where lm-eval normalises differently: its acc_norm divides by the choice's length in characters
without the delimiter; ours does the same, so they agree too. lm-eval 0.4.13 ignores target_delimiter for
loglikelihood tasks, so the YAML puts the space in doc_to_target, as its own lambada task does.
"""

from __future__ import annotations

import json

import pytest

from conftest import optional  # noqa: E402

optional("lm_eval")

from laserlm import edited, load_model  # noqa: E402
from laserlm.cli.main import main  # noqa: E402
from laserlm.evaluation.harness import flat_metrics, run_harness  # noqa: E402

from conftest import WORDS, needs_demo  # noqa: E402

MC_YAML = """task: laser_mc
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {val}
    test: {test}
validation_split: validation
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: "{{{{options}}}}"
doc_to_target: "{{{{label}}}}"
target_delimiter: " "
metric_list:
  - metric: acc
  - metric: acc_norm
"""

CLOZE_YAML = """task: laser_cloze
dataset_path: json
dataset_kwargs:
  data_files:
    test: {test}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{' ' + answer}}}}"
metric_list:
  - metric: acc
"""


def _rows(n, seed):
    import random

    rng = random.Random(seed)
    mc, cloze = [], []
    for _ in range(n):
        prompt = " ".join(rng.choice(WORDS[:40]) for _ in range(rng.randint(2, 6)))
        options = rng.sample(WORDS[:40], 3) + [" ".join(rng.sample(WORDS[:40], 2))]
        mc.append({"prompt": prompt, "options": options, "label": rng.randrange(4)})
        cloze.append({"prompt": prompt, "answer": rng.choice(WORDS[:40])})
    return mc, cloze


@pytest.fixture
def tasks(tmp_path):
    mc, cloze = _rows(40, 1)
    files = {}
    for name, rows in (("mc_val", mc[:15]), ("mc_test", mc[15:]), ("cloze", cloze)):
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    yaml = tmp_path / "yaml"
    yaml.mkdir()
    (yaml / "laser_mc.yaml").write_text(MC_YAML.format(val=files["mc_val"], test=files["mc_test"]))
    (yaml / "laser_cloze.yaml").write_text(CLOZE_YAML.format(test=files["cloze"]))
    # The same rows in our custom format (each choice is its literal continuation, leading space included).
    ours_mc = tmp_path / "ours_mc.jsonl"
    ours_mc.write_text("".join(json.dumps({"prompt": r["prompt"], "choices": [" " + o for o in r["options"]],
                                           "label": r["label"]}) + "\n" for r in mc[15:]))
    ours_cloze = tmp_path / "ours_cloze.jsonl"
    ours_cloze.write_text("".join(json.dumps({"prompt": r["prompt"], "answer": r["answer"]}) + "\n" for r in cloze))
    return yaml, ours_mc, ours_cloze


def _ours(model_dir, task, tmp_path, edits=(), metrics="acc,acc_norm"):
    out = tmp_path / "ours.json"
    argv = ["eval", str(model_dir), "-t", str(task), "--metrics", metrics, "--json", str(out)]
    for e in edits:
        argv += ["-e", e]
    assert main(argv) == 0
    return json.loads(out.read_text())["metrics"]


@pytest.mark.parametrize("edits", [(), ("mlp_in:1:k=2", "mlp_out:2:0.25")])
def test_lm_eval_and_laser_eval_agree_on_a_tiny_model(tiny_with_tokenizer, tasks, tmp_path, edits):
    yaml, ours_mc, ours_cloze = tasks
    loaded = load_model(str(tiny_with_tokenizer), device="cpu")
    with edited(loaded.model, list(edits)):
        theirs = flat_metrics(run_harness(loaded.model, loaded.tokenizer, ["laser_mc", "laser_cloze"],
                                          include=str(yaml)))
    mc = _ours(tiny_with_tokenizer, ours_mc, tmp_path, edits)
    cloze = _ours(tiny_with_tokenizer, ours_cloze, tmp_path, edits, metrics="top1")
    assert theirs["laser_mc/acc"] == pytest.approx(mc["acc"], abs=1e-9)
    assert theirs["laser_mc/acc_norm"] == pytest.approx(mc["acc_norm"], abs=1e-9)
    assert theirs["laser_cloze/acc"] == pytest.approx(cloze["top1"], abs=1e-9)


def test_a_harness_task_as_our_rows_splits_by_its_docs(tiny_with_tokenizer, tasks, tmp_path):
    yaml, ours_mc, _ = tasks
    out = tmp_path / "e.json"
    assert main(["eval", str(tiny_with_tokenizer), "-t", "lm-eval:laser_mc", "--lm-eval-include", str(yaml),
                 "--split", "test", "--metrics", "acc,acc_norm", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["n"] == 25  # the task's test docs
    assert doc["metrics"] == _ours(tiny_with_tokenizer, ours_mc, tmp_path)


def test_search_on_a_harness_task_completes_and_resumes(tiny_with_tokenizer, tasks, tmp_path, capsys):
    yaml, _, _ = tasks
    argv = ["search", str(tiny_with_tokenizer), "-t", "lm-eval:laser_mc", "--lm-eval-include", str(yaml),
            "--metric", "acc", "--layers", "1-2", "--rhos", "0.5", "--no-svd-cache", "-o", str(tmp_path / "run")]
    assert main(argv) == 0
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    assert best["metric"] == "acc" and set(best["base"]["val_metrics"]) >= {"acc", "acc_norm", "logloss"}
    assert main(argv) == 0
    assert "swept 0 candidates" in capsys.readouterr().out


def test_laser_eval_lm_eval_prints_the_cost_elsewhere(tiny_with_tokenizer, tasks, tmp_path, capsys):
    yaml, _, _ = tasks
    out = tmp_path / "h.json"
    edits = ["zero/mlp_out:all", "zero/attn_o:all"]  # drastic: on 25 rows a mild edit may leave acc where it was
    assert main(["eval", str(tiny_with_tokenizer), "--lm-eval", "laser_mc", "--lm-eval-include", str(yaml),
                 "-e", edits[0], "-e", edits[1], "--json", str(out), "--device", "cpu"]) == 0
    doc = json.loads(out.read_text())
    assert "laser_mc" in doc["lm_eval"]["results"] and "laser_mc" in doc["lm_eval_base"]["results"]
    # Both sides against lm-eval run here, without and with the edit (so an edit never applied fails), and the edit
    # moves the numbers (so the two runs cannot agree by accident).
    loaded = load_model(str(tiny_with_tokenizer), device="cpu")
    base = flat_metrics(run_harness(loaded.model, loaded.tokenizer, ["laser_mc"], include=str(yaml)))
    with edited(loaded.model, edits):
        cut = flat_metrics(run_harness(loaded.model, loaded.tokenizer, ["laser_mc"], include=str(yaml)))
    assert doc["base_metrics"] == base and doc["metrics"] == cut
    assert base["laser_mc/acc_norm"] != cut["laser_mc/acc_norm"] or base["laser_mc/acc"] != cut["laser_mc/acc"]
    assert doc["difference"]["laser_mc/acc"] == pytest.approx(cut["laser_mc/acc"] - base["laser_mc/acc"])
    assert "difference" in capsys.readouterr().out


def test_without_lm_eval_the_install_is_named(tiny_with_tokenizer, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "lm_eval", None)
    assert main(["eval", str(tiny_with_tokenizer), "--lm-eval", "arc_easy"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'laserlm[lmeval]'" in err and err.count("\n") == 1


@needs_demo
def test_lm_eval_and_laser_eval_agree_on_the_demo_model(tmp_path):
    from laserlm.evaluation.evaluate import evaluate
    from laserlm.evaluation.metrics import METRICS
    from laserlm.evaluation.scoring import Scorer
    from laserlm.evaluation.tasks import load_task

    rows = load_task("bb_epistemic").select("test", 0, 12)
    path = tmp_path / "epi.jsonl"
    path.write_text("".join(json.dumps({"prompt": e.prompt, "options": [c[1:] for c in e.choices],
                                        "label": e.label}) + "\n" for e in rows))
    yaml = tmp_path / "yaml"
    yaml.mkdir()
    (yaml / "laser_mc.yaml").write_text(MC_YAML.format(val=path, test=path))
    loaded = load_model("demo", device="cpu")
    for edits in ([], ["mlp_out:28:0.01"]):
        with edited(loaded.model, edits):
            theirs = flat_metrics(run_harness(loaded.model, loaded.tokenizer, ["laser_mc"], include=str(yaml)))
            ours = evaluate(Scorer(loaded.model, loaded.tokenizer), rows, [METRICS["acc"], METRICS["acc_norm"]])
        assert theirs["laser_mc/acc"] == pytest.approx(ours.metrics["acc"], abs=1e-9)
        assert theirs["laser_mc/acc_norm"] == pytest.approx(ours.metrics["acc_norm"], abs=1e-9)


NL_YAML = """task: laser_nl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {test}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{'\\\\n' + answer}}}}"
metric_list:
  - metric: acc
"""

GEN_YAML = """task: laser_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {test}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
fewshot_delimiter: "\\n\\n"
generation_kwargs:
  until: ["mat"]
  max_gen_toks: 4
metric_list:
  - metric: exact_match
"""


@pytest.fixture
def more_tasks(tmp_path, tasks):
    yaml = tasks[0]
    _, cloze = _rows(30, 2)
    data = tmp_path / "more.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in cloze))
    (yaml / "laser_nl.yaml").write_text(NL_YAML.format(test=data))
    (yaml / "laser_gen.yaml").write_text(GEN_YAML.format(test=data))
    return yaml, cloze


def test_a_cloze_continuation_keeps_the_tasks_own_delimiter(more_tasks):
    """lm-eval scores `doc_to_target` as it is: a newline-led target stays newline-led (it was once re-spaced)."""
    from laserlm.evaluation.harness import harness_task

    yaml, cloze = more_tasks
    task = harness_task("lm-eval:laser_nl", str(yaml))
    ex = task.examples[0]
    assert ex.answers == ["\n" + cloze[0]["answer"]] and ex.answer_prefix == ""
    assert ex.prompt == cloze[0]["prompt"]


def test_num_fewshot_draws_lm_evals_own_examples(more_tasks):
    from laserlm.evaluation.harness import harness_task

    yaml, cloze = more_tasks
    zero, two = harness_task("lm-eval:laser_gen", str(yaml)), harness_task("lm-eval:laser_gen", str(yaml), 2)
    assert zero.examples[0].prompt == cloze[0]["prompt"]
    shots = two.examples[0].prompt.split("\n\n")
    assert len(shots) == 3 and shots[-1] == cloze[0]["prompt"]  # two examples, then the question
    assert all(s.split(" ")[0] in {r["prompt"].split(" ")[0] for r in cloze} for s in shots[:2])


def test_a_generate_until_task_is_searched_by_gen01_cut_at_its_stop(tiny_with_tokenizer, more_tasks, tmp_path):
    from laserlm.evaluation.generation import cut_at_stop
    from laserlm.evaluation.harness import harness_task

    yaml, cloze = more_tasks
    task = harness_task("lm-eval:laser_gen", str(yaml))
    assert task.primary == "gen01" and task.gen_tokens == 4 and task.examples[0].stop == ["mat"]
    assert task.examples[0].answers == [cloze[0]["answer"]]
    assert cut_at_stop("sat on mat big", ["mat"]) == "sat on " and cut_at_stop("a b", ["mat"]) == "a b"
    run = tmp_path / "run"
    assert main(["search", str(tiny_with_tokenizer), "-t", "lm-eval:laser_gen", "--lm-eval-include", str(yaml),
                 "--layers", "2", "--rhos", "0.5", "--no-svd-cache", "-o", str(run), "--device", "cpu"]) == 0
    best = json.loads((run / "best.json").read_text())
    assert best["metric"] == "gen01" and 0 <= best["base"]["val"] <= 1


def test_chat_template_on_a_harness_task_is_lm_evals_own(more_tasks):
    from laserlm.evaluation.harness import harness_task

    from conftest import tiny_tokenizer

    yaml, cloze = more_tasks
    tok = tiny_tokenizer()
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    task = harness_task("lm-eval:laser_mc", str(yaml), 0, tok)
    ex = task.examples[0]
    assert ex.prompt.startswith("<|user|>") and ex.prompt.endswith("<|assistant|>")
    assert all(not c.startswith(" ") for c in ex.choices)  # lm-eval drops the delimiter after a chat header
