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
    # Architectures the table does not know, found by structure: Qwen3-0.6B and Gemma-3-1B shapes, real vocabularies.
    "qwen3-0.6b": dict(model_type="qwen3", hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                       tie_word_embeddings=True),
    "gemma3-1b": dict(model_type="gemma3_text", hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,
                      num_attention_heads=4, num_key_value_heads=1, head_dim=256, vocab_size=262144,
                      sliding_window=512, final_logit_softcapping=None, tie_word_embeddings=True),
    # The multimodal class google/gemma-3-4b-it loads as, with the 1B text tower (and a shrunk vision tower).
    "gemma3-1b-mm": dict(model_type="gemma3", hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,
                         num_attention_heads=4, num_key_value_heads=1, head_dim=256, vocab_size=262208,
                         sliding_window=512),
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
    sizes = dict(SHAPES[shape])
    model_type = sizes.pop("model_type", "llama")
    if model_type == "gemma3":
        vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                      image_size=64, patch_size=16)
        config = tf.Gemma3Config(text_config={**sizes, "max_position_embeddings": 4096}, vision_config=vision,
                                 mm_tokens_per_image=16)
    else:
        config = tf.AutoConfig.for_model(model_type, **sizes, max_position_embeddings=4096)
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
    tok.chat_template = None
    model = build_model(args.shape, getattr(torch, args.dtype), "cpu")
    model.save_pretrained(args.output)
    tok.save_pretrained(args.output)
    print(f"{args.output}: {args.shape}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"{len(tok)}-token tokenizer, {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
