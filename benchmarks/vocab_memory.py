"""Peak memory of a search on a model with a large vocabulary: a Qwen3-shaped model (151,936 tokens) with a tiny
hidden size, so that what is measured is what grows with vocabulary x scored positions, not the weights.

    python benchmarks/vocab_memory.py [--vocab 151936] [--rows 200] [--model-type qwen3]

Prints the search's peak RSS (the `laser search` process alone, measured by itself) and the weights' share.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import resource, sys
from laserlm.cli.main import entry
sys.argv = ["laser"] + sys.argv[1:]
try:
    entry()
except SystemExit as e:
    code = e.code
else:
    code = 0
print("PEAK_RSS_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


def build(folder: Path, model_type: str, vocab: int) -> int:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_any import tiny_any

    from laserlm.models.loading import load_model

    model = tiny_any(model_type, vocab=vocab, max_params=10**9)
    model.save_pretrained(folder)
    load_model("demo", device="cpu").tokenizer.save_pretrained(folder)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def peak_search(folder: Path, rows: int, run: Path, types: str = "mlp_in") -> tuple[int, str]:
    argv = ["search", str(folder), "-t", "bb_wikidata", "--metric", "top1", "--limit", str(rows), "--layers", "1",
            "--rhos", "0.1", "--types", types, "--device", "cpu", "-o", str(run)]
    done = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True)
    peak = [int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("PEAK_RSS_KIB")]
    if done.returncode != 0 or not peak:
        raise SystemExit(f"search failed: {done.stderr[-2000:]}")
    return peak[0] * 1024, done.stderr


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--rows", type=int, default=200)
    p.add_argument("--model-type", default="qwen3")
    p.add_argument("--types", default="mlp_in", help="the swept type (an older laserlm: mlp.gate_proj)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        weights = build(folder, args.model_type, args.vocab)
        peak, _ = peak_search(folder, args.rows, Path(tmp) / "run", args.types)
        best = json.loads((Path(tmp) / "run" / "best.json").read_text())
    print(f"{args.model_type}, vocabulary {args.vocab:,}, {args.rows} val rows: peak RSS {peak / 2**30:.2f} GiB "
          f"(weights {weights / 2**30:.2f} GiB); base val top1 {best['base']['val']:.3f}")


if __name__ == "__main__":
    main()
