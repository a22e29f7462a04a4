"""`laser eval`'s batched scorer against a one-example-per-forward loop, same rows, same run.

    python benchmarks/eval_speed.py [--model demo] [--task bb_wikidata] [--split val] [--limit 1000]

The loop is what the original LASER scripts do: for each example, one forward of prompt+answer with
logits at every position, then log-softmax over all of them.
"""

import argparse
import time

import torch

from laserlm import load_model
from laserlm.evaluation.evaluate import Prepared
from laserlm.evaluation.scoring import Scorer
from laserlm.evaluation.tasks import load_task


def one_by_one(model, tok, examples):
    top1 = top10 = 0
    nll = 0.0
    with torch.inference_mode():
        for ex in examples:
            p = tok(ex.prompt)["input_ids"]
            answers = [tok(" " + a, add_special_tokens=False)["input_ids"] for a in ex.answers]
            ids = torch.tensor([p + answers[0]])
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)
            firsts = {a[0] for a in answers}
            top = logp[len(p) - 1].topk(10).indices.tolist()
            top1 += top[0] in firsts
            top10 += bool(firsts & set(top))
            nll -= sum(logp[len(p) - 1 + j, t].item() for j, t in enumerate(answers[0])) / len(answers[0])
    n = len(examples)
    return {"top1": top1 / n, "top10": top10 / n, "logloss": nll / n}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo")
    ap.add_argument("--task", default="bb_wikidata")
    ap.add_argument("--split", default="val")
    ap.add_argument("--limit", type=int, default=1000)
    args = ap.parse_args()
    loaded = load_model(args.model)
    examples = load_task(args.task).select(args.split, 0, args.limit)
    assert examples[0].kind == "cloze", "this benchmark's loop scores cloze rows"
    scorer = Scorer(loaded.model, loaded.tokenizer)
    t0 = time.perf_counter()
    batched = Prepared(scorer, examples).score().metrics
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    loop = one_by_one(loaded.model, loaded.tokenizer, examples)
    t_loop = time.perf_counter() - t0
    print(f"{args.model} on {args.task} ({args.split}, {len(examples)} rows)")
    print(f"  batched (laser eval): {t_batched:7.1f} s  {batched}")
    print(f"  one example/forward : {t_loop:7.1f} s  {loop}")
    print(f"  speed-up            : {t_loop / t_batched:7.2f}x")


if __name__ == "__main__":
    main()
