"""Compare a dense and a --factorized folder written by `laser apply`: max logit difference and speed.

    laser apply demo -e mlp:all:0.1 -o /tmp/dense
    laser apply demo -e mlp:all:0.1 -o /tmp/fact --factorized
    python benchmarks/factorized_speed.py /tmp/dense /tmp/fact
"""

import sys
import time

import torch

from laserlm import load_model


def bench(model, ids, reps=5):
    with torch.inference_mode():
        model(ids)
        t0 = time.perf_counter()
        for _ in range(reps):
            out = model(ids).logits
    return out, (time.perf_counter() - t0) / reps


def main():
    dense, fact = load_model(sys.argv[1]).model, load_model(sys.argv[2]).model
    ids = torch.randint(0, dense.config.vocab_size, (8, 256), generator=torch.Generator().manual_seed(0))
    a, ta = bench(dense, ids)
    b, tb = bench(fact, ids)
    print(f"max |logit diff| = {(a - b).abs().max().item():.2e}")
    print(f"forward 8x256: dense {ta * 1000:.0f} ms, factorized {tb * 1000:.0f} ms, speed-up {ta / tb:.2f}x")


if __name__ == "__main__":
    main()
