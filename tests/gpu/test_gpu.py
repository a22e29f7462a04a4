"""What only a CUDA machine can break: packed masks under CUDA attention, the prefix walk and attention replay on
the GPU, a device map that really splits a model between the GPU and the CPU, and peak memory.

Every check compares against something computed another way (the CPU, one sequence per request, plain full
forwards), so a CUDA-only bug fails here. Marked `gpu`: skipped without CUDA (CI has none). Run them with
`pytest -m gpu tests/gpu` (benchmarks/gpu_check.sh does, with the GPU benchmarks).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from laserlm import get_layout
from laserlm.cli.main import main
from laserlm.core.edits import edited
from laserlm.core.svd import SVDCache
from laserlm.evaluation.evaluate import Prepared
from laserlm.evaluation.generation import GenSettings
from laserlm.evaluation.metrics import choose_metrics
from laserlm.evaluation.scoring import Scorer
from laserlm.evaluation.tasks import Example
from laserlm.sweep.store import ResultStore
from laserlm.sweep.sweeper import Sweeper, grid

from conftest import (ARCHS, MLM, build_tiny, choice_rows, cloze_rows, needs_demo, packed_prepared, plain_generate,
                      swept_generations, tiny_tokenizer)

pytestmark = pytest.mark.gpu
CAUSAL = [a for a in ARCHS if a not in MLM]
GEN = choose_metrics("cloze", ["gen01", "gen01_paper", "top1"], False)


def _scores(ev) -> torch.Tensor:
    return torch.tensor([s for r in ev.records for s in r["scores"]], dtype=torch.float64)


def _clear_preds(ev, margin: float = 1e-3) -> list[int]:
    """Rows whose best choice leads the next by more than `margin` (a prediction no rounding can flip)."""
    out = []
    for i, r in enumerate(ev.records):
        top = sorted(r["scores"], reverse=True)
        if len(top) < 2 or top[0] - top[1] > margin:
            out.append(i)
    return out


@pytest.mark.parametrize("arch", CAUSAL)
def test_packed_scores_on_cuda_equal_unpacked_and_the_cpu(arch):
    tok, rows = tiny_tokenizer(), choice_rows(24, seed=3)
    cpu = packed_prepared(build_tiny(arch), tok, rows, False).score()
    model = build_tiny(arch).to("cuda")
    packed_prep = packed_prepared(model, tok, rows, True)
    assert packed_prep.scorer.trees and sum(len(b) for b in packed_prep.batches) < len(rows)
    packed, plain = packed_prep.score(), packed_prepared(model, tok, rows, False).score()
    # float32: the same arithmetic up to summation order, on either device
    torch.testing.assert_close(_scores(packed), _scores(plain), atol=1e-4, rtol=0)
    torch.testing.assert_close(_scores(packed), _scores(cpu), atol=1e-4, rtol=0)
    clear = _clear_preds(cpu)
    assert len(clear) > len(rows) // 2
    assert [packed.records[i]["pred"] for i in clear] == [cpu.records[i]["pred"] for i in clear]
    # bfloat16 rounds every activation to 8 bits of mantissa: packing may move a score by about as much as that
    # rounding does (another summation order), so its error against the float32 truth stays within twice what
    # one sequence per request has
    bf = build_tiny(arch).to("cuda", torch.bfloat16)
    own = (_scores(packed_prepared(bf, tok, rows, False).score()) - _scores(cpu)).abs().max().item()
    got = (_scores(packed_prepared(bf, tok, rows, True).score()) - _scores(cpu)).abs().max().item()
    assert 0 < own < 0.5 and got <= 2 * own


@pytest.mark.parametrize("arch", CAUSAL)
def test_prefix_walk_and_attention_replay_on_cuda_equal_plain_forwards(arch, tmp_path):
    model, tok = build_tiny(arch).to("cuda"), tiny_tokenizer()
    layout = get_layout(model)
    types = [t for t in ("mlp_in", "mlp_out", "attn_o", "attn_qkv", "attn_v") if t in layout.types][:3]
    cands = grid(types, range(3), [0.5, "k=1"], ["svd"])
    rows = [Example(r["prompt"], answers=[r["answer"]]) for r in cloze_rows(40)]
    for prepared in (Prepared(Scorer(model, tok, max_tokens=64), rows), packed_prepared(model, tok, choice_rows(16), True,
                                                                                        max_tokens=128)):
        cache = SVDCache(disk=None)
        sweeper = Sweeper(model, layout, prepared, ResultStore(None), {"m": arch}, "val", cache)
        sweeper.sweep(cands)
        for c in [None] + cands:
            with edited(model, [c] if c else [], svd_cache=cache):
                plain = prepared.score().metrics
            fast = sweeper.done([c] if c else [])["metrics"]
            for name in ("top1", "top10", "acc"):
                assert fast.get(name) == plain.get(name), (c, name)
            assert fast["logloss"] == pytest.approx(plain["logloss"], abs=1e-5), c


def _split_llama(tmp_path):
    """The tiny llama (3 blocks) with its embeddings and blocks 0-1 on the GPU, block 2, the norm and the head on
    the CPU: accelerate's hooks move the hidden states across devices at block 2 and back for the rotary table."""
    import accelerate

    model = build_tiny("llama")
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    device_map = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.norm": "cpu", "lm_head": "cpu",
                  **{f"model.layers.{i}": 0 if i < 2 else "cpu" for i in range(3)}}
    return accelerate.dispatch_model(model, device_map=device_map), reference


def test_a_split_device_map_searches_like_one_device_and_restores_every_weight(tmp_path):
    model, reference = _split_llama(tmp_path)
    devices = {p.device.type for p in model.parameters()}
    assert devices == {"cuda", "cpu"}, devices
    hook = model.model.layers[2].__dict__["forward"]  # accelerate's hook is the block's own forward
    one = build_tiny("llama").to("cuda")
    tok = tiny_tokenizer()
    rows = [Example(r["prompt"], answers=[r["answer"]]) for r in cloze_rows(40)]
    cands = grid(["mlp_in", "mlp_out", "attn_o"], range(3), [0.5, 0.1], ["svd"])
    results = {}
    for name, m in (("map", model), ("one", one)):
        sweeper = Sweeper(m, get_layout(m), Prepared(Scorer(m, tok, max_tokens=64), rows), ResultStore(None),
                          {"m": name}, "val", SVDCache(disk=None))
        sweeper.sweep(cands)
        results[name] = {str(c): sweeper.done([c])["metrics"] for c in cands}
    for c in map(str, cands):
        assert results["map"][c]["top1"] == results["one"][c]["top1"], c
        assert results["map"][c]["logloss"] == pytest.approx(results["one"][c]["logloss"], abs=1e-5), c
    assert model.model.layers[2].__dict__["forward"] is hook
    state = model.state_dict()
    for k, v in reference.items():
        assert torch.equal(state[k].cpu(), v), k  # bit-exact, on whichever device the map put it


def _tails_through_the_walk(model, tok, rows, cands) -> list[tuple[list, dict]]:
    return swept_generations(model, Prepared(Scorer(model, tok, max_tokens=96), rows, GEN, GenSettings(8, 1)), cands)


@pytest.mark.parametrize("arch", CAUSAL)
def test_generation_tails_from_recorded_keys_on_cuda_equal_generate(arch):
    """The keys recorded in the packed pass on CUDA, and the base pass's for the skipped blocks, give generate() on
    CUDA the ids it makes from scratch (float32)."""
    model, tok = build_tiny(arch).to("cuda"), tiny_tokenizer()
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids("the")
    rows = [Example(r["prompt"], answers=[r["answer"]]) for r in cloze_rows(24, 5)]
    cands = grid(["mlp_in", "attn_o"], [1, 2], [0.1], ["svd"])
    calls = _tails_through_the_walk(model, tok, rows, cands)
    for c, (got, _last) in zip(cands, calls):
        with edited(model, [c], svd_cache=SVDCache(disk=None)):  # per-row model.generate, not our batched decoder
            assert got == [plain_generate(model, tok, r.prompt, GenSettings(8, 1)) for r in rows], c
    if arch != "gemma":  # the tiny gemma repeats its last prompt token under every edit: nothing to decode
        assert sum(last["reused"] for _, last in calls) > 0


def test_generation_tails_on_a_split_device_map_equal_one_device(tmp_path):
    """Recorded keys live on their block's device (GPU for blocks 0-1, CPU for block 2): the tails' cache must be
    laid out per device, and the ids equal the single-device run's."""
    model, _ = _split_llama(tmp_path)
    tok = tiny_tokenizer()
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids("the")
    one = build_tiny("llama").to("cuda")
    one.generation_config.eos_token_id = model.generation_config.eos_token_id
    rows = [Example(r["prompt"], answers=[r["answer"]]) for r in cloze_rows(24, 5)]
    cands = grid(["mlp_in", "attn_o"], [1, 2], [0.1], ["svd"])
    split, single = _tails_through_the_walk(model, tok, rows, cands), _tails_through_the_walk(one, tok, rows, cands)
    assert [ids for ids, _ in split] == [ids for ids, _ in single]
    assert sum(last["reused"] for _, last in split) > 0


def test_peak_memory_is_the_weights_plus_a_bounded_workspace():
    """A SmolLM2-135M-shaped llama (random weights, float32, 49,152-token vocabulary) on 1,500 bb_wikidata rows
    at 16,384 tokens a batch: the base pass and one candidate of the prefix walk. Full-vocabulary float32 logits
    of one batch would take 16,384 x 49,152 x 4 bytes = 3.2 GB; the head's gathered rows, the activations and the
    prefix cache stay within 1 GiB of the weights."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from random_model import build_model, task_texts, train_tokenizer

    from laserlm.evaluation.tasks import load_task

    tok = train_tokenizer(task_texts(), 8000)
    model = build_model("smollm2", torch.float32, "cuda")
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    rows = load_task("bb_wikidata").select("val", 0, 1500)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    prepared = Prepared(Scorer(model, tok, max_tokens=16384), rows)
    sweeper = Sweeper(model, get_layout(model), prepared, ResultStore(None), {"m": "mem"}, "val", SVDCache(disk=None))
    sweeper.sweep(grid(["mlp_in"], [28], [0.01], ["svd"]))
    peak = torch.cuda.max_memory_allocated()
    assert len(rows) == 1500 and len(sweeper.store.rows) == 2
    assert peak <= weights + (1 << 30), f"peak {peak / 2**30:.2f} GiB, weights {weights / 2**30:.2f} GiB"


@needs_demo
def test_the_demo_searches_on_cuda_end_to_end(tmp_path):
    out = tmp_path / "demo"
    assert main(["search", "demo", "-t", "bb_wikidata", "--metric", "top1", "--layers", "27-28", "--rhos",
                 "0.1,0.01", "--limit", "200", "--device", "cuda", "--compose", "-o", str(out)]) == 0
    best = json.loads((out / "best.json").read_text())
    assert best["base"]["test"] is not None and "composed" in best and "test_ci" in best["best"]


def test_svd_cache_keeps_decompositions_on_the_cpu_and_hands_them_out_on_the_gpu():
    cache = SVDCache(disk=None)
    w = torch.randn(64, 32, device="cuda")
    svd = cache.get(w)
    assert svd.U.device.type == "cuda" and svd.S.device.type == "cuda"
    assert all(t.device.type == "cpu" for s in cache._memory.values() for t in (s.U, s.S, s.Vh))
    torch.testing.assert_close((svd.U * svd.S) @ svd.Vh, w, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("model_type", ["qwen3", "mixtral", "gemma3", "llama4_text", "gpt_oss"])
def test_structure_found_models_keep_the_fast_path_on_cuda(model_type):
    """Models the table does not know, on CUDA: the sweep's candidates (prefix cache, attention replay, packing, the
    gathered head; experts one slice at a time) against the model's own forward; in bfloat16 the fast path's
    checks still pass at bf16's own tolerance."""
    from laserlm.core.edits import Edit
    from tiny_any import tiny_any

    model, tok = tiny_any(model_type, vocab=512).to("cuda"), tiny_tokenizer()
    layout = get_layout(model)
    rows = [Example(r["prompt"], answers=[r["answer"]]) for r in cloze_rows(24)]
    cands = [Edit("svd", "mlp_in", 1, 0.5), Edit("svd", "mlp_out", 1, "k=1"), Edit("svd", "attn_o", 1, 0.5)]
    sweeper = Sweeper(model, layout, Prepared(Scorer(model, tok), rows), ResultStore(None), {"m": model_type},
                      "val", SVDCache(disk=None))
    sweeper.sweep(cands)
    assert sweeper.replay.prefix and sweeper.replay.attention, sweeper.replay.reasons
    plain = Scorer(model, tok)
    plain.fast, plain.trees = False, False
    for c in [None, *cands]:
        with edited(model, [c] if c else [], layout=layout):
            want = Prepared(plain, rows).score().metrics
        assert sweeper.done([c] if c else [])["metrics"]["logloss"] == pytest.approx(want["logloss"], abs=1e-4), c
    bf = Scorer(tiny_any(model_type, vocab=512, dtype=torch.bfloat16).to("cuda"), tok)
    assert bf.fast and bf.trees, bf.fast_reasons
