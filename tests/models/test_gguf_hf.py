"""GGUF out from an HF folder (llama, mistral, qwen2, qwen3): transformers reads the file back with the edited
model's logits, llama.cpp runs it (same greedy tokens from the same text, so its tokenizer too), and what cannot be
written right is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import llama_cpp, optional
from tiny_any import tiny_config

FAMILIES = ["llama", "mistral", "qwen2", "qwen3"]
TEXT = Path(__file__).resolve().parents[2] / "src/laserlm/data/declaration_of_independence.txt"
VOCAB = 512


def bpe_tokenizer(pre: str = "gpt-2"):
    """A byte-level BPE trained on the shipped text, with the pre-tokenizer of GPT-2 or of Qwen2."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from laserlm.models.gguf_vocab import QWEN2_SPLIT

    tok = Tokenizer(models.BPE())
    if pre == "gpt-2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_SPLIT), "isolated"),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - 8, special_tokens=["<|endoftext|>", "<|im_start|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TEXT.read_text().splitlines(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def hf_folder(tmp_path, family: str, pre: str = "gpt-2", tokenizer=None, head_dim: int | None = None) -> Path:
    from transformers import AutoModelForCausalLM

    config = tiny_config(family, vocab=VOCAB)
    if family == "qwen3":  # key length != hidden / heads, as in every Qwen3: written as its own key (transformers'
        config.head_dim = head_dim or 128  # GGUF reader ignores that key and assumes Qwen3's 128)
    config.tie_word_embeddings = family in ("qwen2", "qwen3")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    folder = tmp_path / f"tiny-{family}"
    model.save_pretrained(folder)
    (tokenizer or bpe_tokenizer(pre)).save_pretrained(folder)
    return folder


def _edited_logits(folder, ids, edit="mlp_out:1:0.25"):
    from laserlm.core.edits import edited
    from laserlm.models.loading import load_model

    loaded = load_model(str(folder), device="cpu", dtype="float32")
    with edited(loaded.model, [edit]), torch.no_grad():
        return loaded.model(torch.tensor([ids])).logits[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_transformers_reads_the_written_file_with_the_edited_logits(tmp_path, family):
    from laserlm.cli.main import main
    from laserlm.models.loading import load_model

    folder = hf_folder(tmp_path, family, pre="qwen2" if family.startswith("qwen") else "gpt-2")
    out = tmp_path / "out.gguf"
    assert main(["apply", str(folder), "-e", "mlp_out:1:0.25", "--gguf", str(out), "--quant", "F32",
                 "--device", "cpu"]) == 0
    ids = load_model(str(folder), device="cpu").tokenizer("We hold these truths to be self-evident")["input_ids"]
    back = load_model(str(out), device="cpu", dtype="float32")
    with torch.no_grad():
        got = back.model(torch.tensor([ids])).logits[0]
    want = _edited_logits(folder, ids)
    base = _edited_logits(folder, ids, edit="mlp_out:1:1.0")
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    assert (base - want).abs().max() > 1e-3  # the edit shows in the logits the file gives
    assert back.tokenizer(["We hold these truths"])["input_ids"][0] == \
        load_model(str(folder), device="cpu").tokenizer("We hold these truths")["input_ids"]


def test_metadata_types_and_the_quant_fallback(tmp_path, capsys):
    gguf = pytest.importorskip("gguf")
    from laserlm.cli.main import main

    folder = hf_folder(tmp_path, "qwen3", pre="qwen2", head_dim=32)  # 32 != 64 / 4
    cfg = json.loads((folder / "config.json").read_text())
    out = tmp_path / "q8.gguf"
    assert main(["apply", str(folder), "-e", "mlp_in:0:0.5", "--gguf", str(out), "--quant", "Q8_0",
                 "--device", "cpu"]) == 0
    r = gguf.GGUFReader(str(out))
    field = lambda k: r.fields[k].contents()  # noqa: E731
    assert field("general.architecture") == "qwen3"
    assert field("qwen3.block_count") == cfg["num_hidden_layers"] == 2
    assert field("qwen3.attention.key_length") == 32 and field("qwen3.attention.head_count_kv") == 2
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "qwen2"
    tokens = field("tokenizer.ggml.tokens")
    assert len(tokens) == VOCAB and tokens[0] == "<|endoftext|>" and tokens[-1] == f"[PAD{VOCAB - 1}]"
    assert field("tokenizer.ggml.token_type")[0] == gguf.TokenType.CONTROL
    assert field("tokenizer.ggml.eos_token_id") == 0
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert "output.weight" not in types  # tied: llama.cpp reads the embedding
    assert types["blk.0.attn_q_norm.weight"] == "F32" and types["blk.0.ffn_up.weight"] == "Q8_0"
    assert types["blk.0.attn_q.weight"] == "Q8_0"  # 64 columns: two blocks of 32


def test_llama3_rope_scaling_is_written_as_rope_freqs(tmp_path):
    gguf = pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from laserlm.models.gguf_hf import write_gguf_hf

    config = tiny_config("llama", vocab=VOCAB)
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    config.rope_parameters = rope
    model = AutoModelForCausalLM.from_config(config)
    write_gguf_hf(model, bpe_tokenizer(), tmp_path / "r.gguf", {}, "F32", torch.float32)
    r = gguf.GGUFReader(str(tmp_path / "r.gguf"))
    factors = next(t for t in r.tensors if t.name == "rope_freqs.weight").data
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    plain = 1.0 / 500000.0 ** (torch.arange(0, 16, 2, dtype=torch.float64) / 16)  # head_dim 16
    np.testing.assert_allclose(factors, (plain / scaled).numpy(), rtol=1e-5)
    assert factors.min() == 1.0 and factors.max() == 8.0


def _llama_cpp_greedy(path, prompt: str, n: int = 10) -> tuple[int, list[int]]:
    """(prompt tokens, greedy continuation ids) as llama.cpp's server gives them, tokenizing the text itself. Ids,
    not text: the two decoders render a lone byte token differently."""
    r = llama_cpp(path, [{"prompt": prompt, "n_predict": n, "n_probs": 1}])[0]
    ids = [c["id"] for c in r["choices"][0]["logprobs"]["content"]]
    assert len(ids) >= n - 2  # the server may hold back the last tokens of an unfinished UTF-8 character
    return r["usage"]["prompt_tokens"], ids


@pytest.mark.parametrize("family,pre", [("llama", "gpt-2"), ("qwen2", "qwen2"), ("qwen3", "qwen2")])
def test_llama_cpp_runs_the_file_from_text_as_the_folder_does(tmp_path, family, pre):
    from laserlm.cli.main import main

    optional("xllamacpp")
    folder = hf_folder(tmp_path, family, pre=pre, head_dim=32)
    out = tmp_path / "out.gguf"
    assert main(["apply", str(folder), "-e", "mlp_out:1:0.25", "--gguf", str(out), "--quant", "F32",
                 "--device", "cpu"]) == 0
    prompt = "When in the Course of human events, 1776 people's rights"
    assert_same_greedy(out, folder, prompt)


def assert_same_greedy(out, folder, prompt: str, hidden=()) -> None:
    """Same prompt length and greedy ids; ids in `hidden` (byte pieces, which llama.cpp's server holds back until
    they complete a character, and may then leave out of its list) are not compared."""
    n, ids = _llama_cpp_greedy(out, prompt)
    m, want = _folder_greedy(folder, prompt)
    got, want = ([i for i in seq if i not in hidden] for seq in (ids, want))
    assert (n, got) == (m, want[:len(got)])


def _folder_greedy(folder, prompt: str, edit: str = "mlp_out:1:0.25", n: int = 10) -> tuple[int, str]:
    from laserlm.core.edits import edited
    from laserlm.models.loading import load_model

    loaded = load_model(str(folder), device="cpu", dtype="float32")
    x = torch.tensor([loaded.tokenizer(prompt)["input_ids"]])
    with edited(loaded.model, [edit]), torch.no_grad():
        y = loaded.model.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                  attention_mask=torch.ones_like(x), pad_token_id=0)
    return x.shape[1], y[0, x.shape[1]:].tolist()


def test_what_cannot_be_written_right_is_refused(tmp_path, capsys):
    from conftest import build_tiny, tiny_tokenizer

    from laserlm.cli.main import main

    folder = hf_folder(tmp_path, "llama", tokenizer=tiny_tokenizer())  # a word-level tokenizer, Whitespace split
    assert main(["apply", str(folder), "-e", "mlp_out:1:0.25", "--gguf", str(tmp_path / "x.gguf")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "WordLevel" in err
    assert not (tmp_path / "x.gguf").exists()

    gpt2 = tmp_path / "gpt2"
    build_tiny("gpt2").save_pretrained(gpt2)
    bpe_tokenizer().save_pretrained(gpt2)
    assert main(["apply", str(gpt2), "-e", "mlp_out:1:0.25", "--gguf", str(tmp_path / "y.gguf")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'gpt2' is not one laserlm writes" in err


def test_an_unknown_pre_tokenizer_is_refused_not_guessed():
    from laserlm.errors import UserError
    from laserlm.models.gguf_vocab import QWEN2_SPLIT, pre_tokenizer_name

    byte = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    split = lambda r: {"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": False}  # noqa
    assert pre_tokenizer_name({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [split(QWEN2_SPLIT), byte]},
                               "normalizer": {"type": "NFC"}}) == "qwen2"
    assert pre_tokenizer_name({"pre_tokenizer": {**byte, "use_regex": True}}) == "gpt-2"
    with pytest.raises(UserError, match="none of those"):  # one digit more per number: another model's regex
        pre_tokenizer_name({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            split(QWEN2_SPLIT.replace(r"\p{N}|", r"\p{N}{1,2}|")), byte]}})
    with pytest.raises(UserError, match="normalizer"):
        pre_tokenizer_name({"pre_tokenizer": byte, "normalizer": {"type": "Lowercase"}})


def spm_tokenizer():
    """A Llama-2-style tokenizer.json (SentencePiece BPE with byte fallback): <unk> <s> </s>, the 256 byte pieces,
    then the merged pieces in merge order; "▁" for spaces, BOS added."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    base = Tokenizer(models.BPE())
    base.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    base.train_from_iterator(TEXT.read_text().splitlines(), trainers.BpeTrainer(vocab_size=VOCAB - 259,
                                                                                show_progress=False))
    state = json.loads(base.to_str())["model"]
    trained = sorted(state["vocab"].items(), key=lambda kv: kv[1])
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    vocab.update({t: len(vocab) + i for i, (t, _) in enumerate(trained)})
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = base.normalizer
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def test_a_sentencepiece_style_tokenizer_runs_in_llama_cpp(tmp_path):
    """Llama-2 / Mistral tokenizers: llama.cpp's SentencePiece tokenizer, fed the written scores and types, splits
    text (a byte-fallback character included) as the folder's tokenizer does."""
    from laserlm.cli.main import main
    from laserlm.models.loading import load_model

    optional("xllamacpp")
    folder = hf_folder(tmp_path, "mistral", tokenizer=spm_tokenizer())
    out = tmp_path / "spm.gguf"
    assert main(["apply", str(folder), "-e", "mlp_out:1:0.25", "--gguf", str(out), "--quant", "F32",
                 "--device", "cpu"]) == 0
    loaded = load_model(str(folder), device="cpu", dtype="float32")
    prompt = "When in the Course of human events, it becomes necessary — 1776 ✓"
    ids = loaded.tokenizer(prompt)["input_ids"]
    assert ids[0] == 1 and any(3 <= i < 259 for i in ids)  # BOS, and bytes for what the pieces lack
    assert_same_greedy(out, folder, prompt, hidden=range(3, 259))
    back = load_model(str(out), device="cpu")
    assert back.tokenizer(prompt)["input_ids"] == ids


def test_rows_that_do_not_split_into_blocks_fall_back_to_f16_and_say_so(tmp_path):
    gguf = pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM

    from laserlm.models.gguf_hf import write_gguf_hf

    config = tiny_config("llama", vocab=VOCAB)
    config.intermediate_size = 40  # ffn_down's rows are 40 long: no whole Q4_0 blocks of 32
    said = []
    report = write_gguf_hf(AutoModelForCausalLM.from_config(config), bpe_tokenizer(), tmp_path / "q4.gguf", {},
                           "Q4_0", torch.float32, log=said.append)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(tmp_path / "q4.gguf")).tensors}
    assert types["blk.0.ffn_down.weight"] == "F16" and types["blk.0.ffn_up.weight"] == "Q4_0"
    assert types["output.weight"] == "Q4_0" and types["blk.0.attn_norm.weight"] == "F32"
    assert len(said) == 2 and "blk.1.ffn_down.weight: rows of 40" in said[1] and len(report["notes"]) == 2
