"""The fast path on models the table does not know: prefix cache, attention replay, packing and the head at scored
positions give, candidate by candidate, the metrics of the model's own forward under the same edit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from laserlm import get_layout
from laserlm.core.edits import Edit, edited
from laserlm.core.svd import SVDCache
from laserlm.evaluation.evaluate import Prepared, evaluate
from laserlm.evaluation.scoring import Scorer
from laserlm.sweep.store import ResultStore
from laserlm.sweep.sweeper import Sweeper

from conftest import choice_rows, cloze_rows, needs_demo, tiny_tokenizer
from tiny_any import tiny_any

FAMILIES = ["qwen3", "olmo2", "granite", "smollm3", "gemma3", "mixtral", "qwen3_moe", "phi", "falcon", "starcoder2",
            "cohere", "llama4_text"]


def _rows(kind: str):
    from laserlm.evaluation.tasks import Example

    if kind == "choice":
        return choice_rows(12, seed=2)
    return [Example(r["prompt"], answers=[r["answer"]]) for r in cloze_rows(12, seed=4)]


@pytest.mark.parametrize("model_type", FAMILIES)
@pytest.mark.parametrize("kind", ["cloze", "choice"])
def test_sweep_equals_the_models_own_forward(model_type, kind):
    torch.manual_seed(0)
    model = tiny_any(model_type, vocab=512)
    tok = tiny_tokenizer()
    layout = get_layout(model)
    rows = _rows(kind)
    scorer = Scorer(model, tok)
    assert scorer.fast, scorer.fast_reasons
    assert scorer.trees, scorer.fast_reasons
    cands = [Edit("svd", "mlp_in", 1, 0.1), Edit("svd", "mlp_out", 1, "k=2"), Edit("svd", "attn_o", 1, 0.5),
             Edit("svd", "mlp_out", 0, "k=1")]
    store = ResultStore(None)
    sweeper = Sweeper(model, layout, Prepared(scorer, rows), store, {"m": model_type}, "val", SVDCache(disk=None))
    sweeper.sweep(cands)
    assert sweeper.replay.prefix and sweeper.replay.attention, sweeper.replay.reasons
    plain = Scorer(model, tok)
    plain.fast, plain.trees = False, False  # the model's own forward, one request a row
    for c in [None, *cands]:
        row = sweeper.done([] if c is None else [c])
        with edited(model, [] if c is None else [c], layout=layout):
            want = evaluate(plain, rows).metrics
        for name, value in want.items():
            assert row["metrics"][name] == pytest.approx(value, abs=2e-5), (str(c), name)
    # The edits moved the numbers: a replay that ignored them would pass the loop above only by accident.
    assert len({round(sweeper.done([c])["metrics"]["logloss"], 6) for c in cands}) > 1


def test_a_model_whose_head_is_not_its_output_embedding_takes_the_plain_path():
    """A logit map the scorer cannot name: the check fails, says why, and scores stay exact."""
    model = tiny_any("qwen3", vocab=512)
    tok = tiny_tokenizer()
    forward = type(model).forward

    def shifted(self, *a, **k):
        out = forward(self, *a, **k)
        out.logits = out.logits + torch.arange(out.logits.shape[-1], dtype=out.logits.dtype) * 1e-2
        return out

    model.forward = shifted.__get__(model)
    scorer = Scorer(model, tok)
    assert not scorer.fast and "not the output embedding" in scorer.fast_reasons[0]
    rows = _rows("cloze")
    got = evaluate(scorer, rows).metrics
    full = Scorer(model, tok)
    assert got == evaluate(full, rows).metrics


def _laser(*argv, timeout=300):
    return subprocess.run([sys.executable, "-m", "laserlm", *argv, "--device", "cpu"], capture_output=True, text=True,
                          timeout=timeout)


@needs_demo
@pytest.mark.parametrize("model_type", ["qwen3", "mixtral"])
def test_cli_info_search_and_eval_agree_on_a_structure_model(tmp_path, model_type):
    """As a user would: a folder saved with the demo's tokenizer; info says fast_path, search runs with default
    types, and the searched candidate's val metrics equal `laser eval` of that edit on the same rows."""
    from laserlm.models.loading import load_model

    folder = tmp_path / model_type
    tiny_any(model_type).save_pretrained(folder)
    load_model("demo", device="cpu").tokenizer.save_pretrained(folder)
    info = tmp_path / "info.json"
    assert _laser("info", str(folder), "--json", str(info)).returncode == 0
    doc = json.loads(info.read_text())
    assert doc["fast_path"] is True and doc["layout"] == "structure"
    types = {t["type"]: t for t in doc["types"]}
    assert types["mlp_in"]["layers"] == types["mlp_out"]["layers"] == 2
    run = tmp_path / "run"
    done = _laser("search", str(folder), "-t", "bb_epistemic", "--limit", "30", "--rhos", "0.1", "-o", str(run))
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    edited_rows = [r for r in rows if r["edits"]]
    assert {r["edits"][0]["type"] for r in edited_rows} == {"mlp_in", "mlp_out"}
    row = edited_rows[-1]
    e = row["edits"][0]
    out = tmp_path / "eval.json"
    done = _laser("eval", str(folder), "-t", "bb_epistemic", "-e", f"{e['type']}:{e['layer']}:{e['amount']}",
                  "--split", "val", "--limit", "30", "--json", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(out.read_text())["metrics"]
    for name, value in row["metrics"].items():
        assert got[name] == pytest.approx(value, abs=1e-5), name


@needs_demo
def test_a_large_vocabulary_search_stays_small(tmp_path):
    """200 rows on a Qwen3-shaped model with its 151,936-token vocabulary: the head sees only scored positions, a
    few hundred rows a pass, so the peak stays far below what full logits would take."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2] / "benchmarks"))
    from vocab_memory import build, peak_search

    build(tmp_path / "model", "qwen3", 151936)
    peak, _ = peak_search(tmp_path / "model", 200, tmp_path / "run")
    assert peak < 2.5 * 2**30, f"peak RSS {peak / 2**30:.2f} GiB"


# Not causal decoders in the sense used here: XLNet's permutation LM and ProphetNet's n-gram decoder take inputs no
# other causal LM does (their own forwards fail on a plain batch of token ids with a padding mask).
NOT_PLAIN_DECODERS = {"xlnet", "prophetnet"}


def test_every_type_of_the_mapping_scores_exactly_through_whatever_path_it_gets():
    """Every causal-LM type that builds small and runs a forward: a sweep (through the shortcuts its checks allow)
    gives, candidate by candidate, the metrics of its own forward one request a row. Where a shortcut is refused,
    a reason is given."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    tok, rows = tiny_tokenizer(), _rows("cloze")[:8]
    checked, wrong = [], []
    for model_type in sorted(set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) - NOT_PLAIN_DECODERS):
        try:
            model = tiny_any(model_type, vocab=512)
            with torch.no_grad():
                model(input_ids=torch.tensor([[5, 6, 7, 8]]))
        except Exception:  # noqa: BLE001 - its default config does not build or run small here
            continue
        layout = get_layout(model)
        layers = [i for i, t in enumerate(layout.per_layer) if "mlp_in" in t and "mlp_out" in t]
        if not layers:
            continue
        cands = [Edit("svd", "mlp_in", layers[-1], 0.5), Edit("svd", "mlp_out", layers[-1], "k=1")]
        scorer = Scorer(model, tok)
        sweeper = Sweeper(model, layout, Prepared(scorer, rows), ResultStore(None), {"m": model_type}, "val",
                          SVDCache(disk=None))
        sweeper.sweep(cands)
        fast_all = scorer.fast and scorer.trees and sweeper.replay and sweeper.replay.prefix
        assert fast_all or scorer.fast_reasons or sweeper.replay.reasons, model_type
        plain = Scorer(model, tok)
        plain.fast, plain.trees = False, False
        for c in [None, *cands]:
            with edited(model, [c] if c else [], layout=layout):
                want = evaluate(plain, rows).metrics
            got = sweeper.done([c] if c else [])["metrics"]
            if abs(got["logloss"] - want["logloss"]) > 1e-4 or got["top1"] != want["top1"]:
                wrong.append((model_type, str(c)))
        checked.append(model_type)
    assert not wrong and len(checked) >= 100, (wrong, len(checked))
