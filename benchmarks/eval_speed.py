"""`laser eval`'s batched scorer, with and without shared prefixes, against a one-example-per-forward loop.

    python benchmarks/eval_speed.py [--model demo] [--task bb_wikidata] [--split val] [--limit 1000] [--no-loop]

Three ways over the same rows, in one run:
- packed: what `laser eval` does. Requests that share a prefix share one row (a choice row's prompt runs once
  for all its choices, and rows with a common instruction share it), under a tree attention mask.
- one sequence per request: the same batched scorer with packing off (what `laser eval` did before).
- the loop: what the original LASER scripts do, one forward per example (per choice), logits at every position.
It prints each one's time and metrics, and the largest difference of any per-row score from the unpacked
scorer's.
"""

import argparse
import time

import torch

from laserlm import load_model
from laserlm.evaluation.evaluate import Prepared
from laserlm.evaluation.scoring import Scorer, encode_pair
from laserlm.evaluation.tasks import load_task


def one_by_one(model, tok, examples):
    """The authors' way: one forward per example (per choice), log-softmax at every position."""
    hits = 0
    nll = 0.0
    with torch.inference_mode():
        for ex in examples:
            conts = ex.choices if ex.kind == "choice" else [" " + ex.answers[0]]
            scores, gold_nll = [], None
            for c, text in enumerate(conts):
                p, cont = encode_pair(tok, ex.prompt, text)
                logp = torch.log_softmax(model(torch.tensor([p + cont])).logits[0].float(), -1)
                lps = [logp[len(p) - 1 + j, t].item() for j, t in enumerate(cont)]
                scores.append(sum(lps))
                if ex.kind == "cloze":
                    firsts = {encode_pair(tok, ex.prompt, " " + a)[1][0] for a in ex.answers}
                    hits += logp[len(p) - 1].argmax().item() in firsts
                if c == (ex.label if ex.kind == "choice" else 0):
                    gold_nll = -sum(lps) / len(lps)
            if ex.kind == "choice":
                hits += max(range(len(scores)), key=lambda c: (scores[c], -c)) == ex.label
            nll += gold_nll
    n = len(examples)
    return {"acc" if examples[0].kind == "choice" else "top1": hits / n, "logloss": nll / n}


def timed(scorer, examples):
    t0 = time.perf_counter()
    prepared = Prepared(scorer, examples)
    ev = prepared.score()
    rows = sum(len(b) for b in prepared.batches)
    tokens = sum(c.ids.numel() for c in prepared.collated())
    return time.perf_counter() - t0, ev, rows, tokens


def scores(ev):
    out = []
    for r in ev.records:
        out += r["scores"] if "scores" in r else [-r["nll"]]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--task", default="bb_wikidata")
    ap.add_argument("--split", default="val")
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--no-loop", action="store_true", help="skip the one-example-per-forward loop")
    args = ap.parse_args()
    loaded = load_model(args.model)
    examples = load_task(args.task).select(args.split, 0, args.limit)
    print(f"{args.model} on {args.task} ({args.split}, {len(examples)} rows, {examples[0].kind})")
    packed = Scorer(loaded.model, loaded.tokenizer)
    plain = Scorer(loaded.model, loaded.tokenizer)
    plain.trees = False
    t_packed, ev_packed, rows_p, tok_p = timed(packed, examples)
    t_plain, ev_plain, rows_u, tok_u = timed(plain, examples)
    fmt = lambda m: "  ".join(f"{k} {v:.4f}" for k, v in m.items())  # noqa: E731
    print(f"  packed (laser eval)      : {t_packed:7.1f} s  {rows_p:5d} rows {tok_p:7d} tokens  {fmt(ev_packed.metrics)}")
    print(f"  one sequence per request : {t_plain:7.1f} s  {rows_u:5d} rows {tok_u:7d} tokens  {fmt(ev_plain.metrics)}")
    diff = max(abs(a - b) for a, b in zip(scores(ev_packed), scores(ev_plain)))
    print(f"  packed vs unpacked       : {t_plain / t_packed:7.2f}x faster; largest score difference {diff:.2e}")
    device = next(loaded.model.parameters()).device.type
    print(f"SUMMARY eval_speed ({args.task}, {len(examples)} rows, {device}): packed {t_packed:.2f} s, unpacked "
          f"{t_plain:.2f} s, {t_plain / t_packed:.2f}x, largest score difference {diff:.1e}")
    if not args.no_loop:
        t0 = time.perf_counter()
        loop = one_by_one(loaded.model, loaded.tokenizer, examples)
        t_loop = time.perf_counter() - t0
        print(f"  one example/forward loop : {t_loop:7.1f} s  {fmt(loop)}")
        print(f"  packed vs loop           : {t_loop / t_packed:7.2f}x faster")


if __name__ == "__main__":
    main()
