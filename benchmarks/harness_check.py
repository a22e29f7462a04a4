"""lm-evaluation-harness against `laser eval` on the same rows: both accuracies and both times, in one run.

    python benchmarks/harness_check.py [--model demo] [--rows 200] [--edit mlp_in:28:0.01]

It writes N bb_epistemic test rows (a multiple_choice task) and N bb_wikidata rows with single-token answers
(a loglikelihood task) as local lm-eval YAML tasks and as our custom rows, then prints lm-eval's acc (and
acc_norm) beside ours (acc, acc_norm; top1 for the cloze task) and the seconds each took. Offline.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from laserlm import edited, get_layout, load_model
from laserlm.evaluation.evaluate import evaluate
from laserlm.evaluation.harness import flat_metrics, run_harness
from laserlm.evaluation.metrics import METRICS
from laserlm.evaluation.scoring import Scorer
from laserlm.evaluation.tasks import load_task, read_task_file

YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: {kind}
doc_to_text: "{{{{prompt}}}}"
{extra}
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo")
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--edit", action="append", default=[])
    args = ap.parse_args()
    loaded = load_model(args.model, device="cpu")
    tok = loaded.tokenizer
    epi = load_task("bb_epistemic").select("test", 0, args.rows)
    wiki = [e for e in load_task("bb_wikidata").select("test", 0, None)
            if len(tok(" " + e.answers[0], add_special_tokens=False)["input_ids"]) == 1][: args.rows]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mc = [{"prompt": e.prompt, "options": [c[1:] for c in e.choices], "label": e.label} for e in epi]
        cz = [{"prompt": e.prompt, "answer": e.answers[0]} for e in wiki]
        for name, rows in (("mc", mc), ("cloze", cz)):
            (tmp / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (tmp / "check_mc.yaml").write_text(YAML.format(
            name="check_mc", path=tmp / "mc.jsonl", kind="multiple_choice",
            extra='doc_to_choice: "{{options}}"\ndoc_to_target: "{{label}}"\nmetric_list:\n  - metric: acc\n'
                  '  - metric: acc_norm'))
        (tmp / "check_cloze.yaml").write_text(YAML.format(
            name="check_cloze", path=tmp / "cloze.jsonl", kind="loglikelihood",
            extra="doc_to_target: \"{{' ' + answer}}\"\nmetric_list:\n  - metric: acc"))
        ours_mc = tmp / "ours_mc.jsonl"
        ours_mc.write_text("".join(json.dumps({"prompt": r["prompt"], "choices": [" " + o for o in r["options"]],
                                               "label": r["label"]}) + "\n" for r in mc))
        ours_cz = tmp / "ours_cz.jsonl"
        ours_cz.write_text("".join(json.dumps(r) + "\n" for r in cz))
        layout = get_layout(loaded.model)
        with edited(loaded.model, args.edit, layout=layout):
            t0 = time.perf_counter()
            theirs = flat_metrics(run_harness(loaded.model, tok, ["check_mc", "check_cloze"], include=str(tmp)))
            t_theirs = time.perf_counter() - t0
            t0 = time.perf_counter()
            scorer = Scorer(loaded.model, tok)
            ours_a = evaluate(scorer, read_task_file(str(ours_mc)).examples,
                              [METRICS[m] for m in ("acc", "acc_norm")]).metrics
            ours_b = evaluate(scorer, read_task_file(str(ours_cz)).examples, [METRICS["top1"]]).metrics
            t_ours = time.perf_counter() - t0
    print(f"{args.model}, edits {args.edit or 'none'}: {len(mc)} multiple-choice rows (bb_epistemic), "
          f"{len(cz)} single-token cloze rows (bb_wikidata)")
    print(f"  multiple_choice acc       lm-eval {theirs['check_mc/acc']:.4f}   laser {ours_a['acc']:.4f}")
    print(f"  multiple_choice acc_norm  lm-eval {theirs['check_mc/acc_norm']:.4f}   laser {ours_a['acc_norm']:.4f}")
    print(f"  cloze acc / top1          lm-eval {theirs['check_cloze/acc']:.4f}   laser {ours_b['top1']:.4f}")
    print(f"  seconds                   lm-eval {t_theirs:.1f}   laser {t_ours:.1f}   ratio {t_theirs / t_ours:.2f}")


if __name__ == "__main__":
    main()
