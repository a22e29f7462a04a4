"""LASER at real scale without a download: a Llama-2-7B-shaped model with random weights.

    python benchmarks/scale.py                       # GPU: 32 layers, d=4096, MLP 11008, bfloat16
    python benchmarks/scale.py --device cpu --small  # the same code path on a small shape, as a smoke test

It sweeps mlp_in,mlp_out x layers 24-31 x the paper's seven rho on 300 bb_wikidata val rows and prints
seconds per candidate, the SVD seconds (computed up front, so the sweep time is the evaluation alone), and
the peak GPU memory against the weights. Goals on an H100: peak <= weights + 4 GB, <= 0.25 s per candidate.
The tokenizer is a 32,000-token BPE trained here on the task's own text, so rows have realistic lengths.
"""

from __future__ import annotations

import argparse
import time

import torch
import transformers as tf

from laserlm import get_layout
from laserlm.core.edits import parse_layers
from laserlm.core.svd import SVDCache
from laserlm.evaluation.evaluate import Prepared
from laserlm.evaluation.scoring import Scorer
from laserlm.evaluation.tasks import load_task
from laserlm.search.store import ResultStore
from laserlm.search.sweep import PAPER_RHOS, Sweeper, grid


def train_tokenizer(texts: list[str], vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                      pad_token="</s>")


def build_model(args, dtype: torch.dtype) -> torch.nn.Module:
    shape = (dict(hidden_size=256, intermediate_size=688, num_hidden_layers=8, num_attention_heads=4)
             if args.small else dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                     num_attention_heads=32))
    config = tf.LlamaConfig(**shape, vocab_size=32000, max_position_embeddings=4096)
    torch.manual_seed(0)
    with torch.device(args.device):  # transformers' own init (normal, std 0.02), straight on the device
        model = tf.AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--small", action="store_true", help="8 layers, d=256: a CPU smoke test of the same path")
    ap.add_argument("--layers", help="default 24-31 (4-7 with --small)")
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--max-tokens", type=int)
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    rows = load_task("bb_wikidata").select("val", 0, args.limit)
    t0 = time.perf_counter()
    tok = train_tokenizer([r.prompt + " " + r.answers[0] for r in load_task("bb_wikidata").select("all", 0, None)],
                          32000)
    print(f"tokenizer: {len(tok)} tokens, trained in {time.perf_counter() - t0:.1f} s")
    model = build_model(args, dtype)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    layout = get_layout(model)
    layers = list(parse_layers(args.layers or ("4-7" if args.small else "24-31"), "--layers"))
    cands = grid(["mlp_in", "mlp_out"], layers, list(PAPER_RHOS), ["svd"])
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    cache = SVDCache(disk=None)
    t0 = time.perf_counter()
    for t in ("mlp_in", "mlp_out"):
        for layer in layers:
            cache.get(layout.target(t, layer).weight)
    if cuda:
        torch.cuda.synchronize()
    svd_secs = time.perf_counter() - t0
    prepared = Prepared(Scorer(model, tok, max_tokens=args.max_tokens), rows)
    sweeper = Sweeper(model, layout, prepared, ResultStore(None), {"bench": "scale"}, "val", cache)
    sweeper.sweep([])  # the base pass
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    sweeper.sweep(cands)
    if cuda:
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    tokens = sum(len(r.ids) for r in prepared.requests)
    print(f"model: {model.config.num_hidden_layers} layers, d={model.config.hidden_size}, {args.dtype}, "
          f"{weights / 1e9:.2f} GB of weights on {args.device}")
    print(f"rows: {len(rows)} val rows, {tokens} tokens; candidates: {len(cands)} (layers {layers[0]}-{layers[-1]})")
    print(f"SVD: {svd_secs:.1f} s for {2 * len(layers)} matrices")
    print(f"sweep: {secs:.1f} s, {secs / len(cands):.3f} s per candidate")
    if cuda:
        peak = torch.cuda.max_memory_allocated()
        print(f"peak GPU memory: {peak / 1e9:.2f} GB = weights + {(peak - weights) / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
