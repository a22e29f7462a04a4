"""Models of real shapes with random weights, and a tokenizer trained here: real-scale figures without a download.

    python benchmarks/random_model.py --shape smollm2 -o /tmp/smol     # an HF folder laser and the benchmarks load
    python benchmarks/random_model.py --shape llama2-7b --dtype bfloat16 -o /tmp/l7

The tokenizer is a BPE trained on the BIG-bench tasks' own text (vendored), so rows have realistic lengths; the
model's vocabulary keeps the real size (the head's cost is the real one), the tokenizer uses its first ids.
"""

from __future__ import annotations

import argparse
import time

import torch
import transformers as tf

SHAPES = {
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152),
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      vocab_size=32000),
    "small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=8, num_attention_heads=4,
                  vocab_size=32000),
}


def task_texts() -> list[str]:
    from laserlm.evaluation.tasks import load_task

    texts = [r.prompt + " " + r.answers[0] for r in load_task("bb_wikidata").select("all", 0, None)]
    return texts + [r.prompt + r.choices[0] for r in load_task("bb_epistemic").select("all", 0, None)]


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


def build_model(shape: str, dtype: torch.dtype, device: str) -> torch.nn.Module:
    config = tf.LlamaConfig(**SHAPES[shape], max_position_embeddings=4096)
    torch.manual_seed(0)
    with torch.device(device):  # transformers' own init (normal, std 0.02), straight on the device
        model = tf.AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=list(SHAPES), default="smollm2")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--tokenizer-vocab", type=int, default=16000)
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    t0 = time.perf_counter()
    tok = train_tokenizer(task_texts(), min(args.tokenizer_vocab, SHAPES[args.shape]["vocab_size"]))
    model = build_model(args.shape, getattr(torch, args.dtype), "cpu")
    model.save_pretrained(args.output)
    tok.save_pretrained(args.output)
    print(f"{args.output}: {args.shape}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"{len(tok)}-token tokenizer, {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
