"""The analyses against hand computations, and flips against `laser eval --predictions`."""

from __future__ import annotations

import json
import math

import pytest
import torch
import transformers as tf

from laserlm.analysis.analyses import complement, curve_landmarks, effective_rank, generic_share
from laserlm.cli.main import main
from laserlm.core.edits import Edit, edited

from conftest import cloze_rows, tiny_tokenizer


def test_effective_rank_by_hand():
    p = torch.tensor([0.75, 0.25])
    assert effective_rank(torch.tensor([3.0, 1.0])) == pytest.approx(math.exp(-(p * p.log()).sum().item()))
    assert effective_rank(torch.tensor([3.0, 1.0])) == pytest.approx(1.7548, abs=1e-4)
    assert effective_rank(torch.ones(7) * 2.5) == pytest.approx(7.0)
    assert effective_rank(torch.tensor([5.0, 0.0, 0.0])) == pytest.approx(1.0)


def test_complement_keeps_the_removed_components():
    assert complement(Edit("svd", "mlp_in", 3, 0.1), (64, 32)) == Edit("bottom", "mlp_in", 3, "k=29")
    assert complement(Edit("svd", "mlp_in", 3, "k=30"), (64, 32)) == Edit("bottom", "mlp_in", 3, "k=2")


def test_generic_share_and_curve_landmarks():
    assert generic_share([" the", " of", " Paris", "."]) == 0.75
    rows = [{"removed": 0, "top1": 0.2, "logloss": 3}, {"removed": 0.5, "top1": 0.2, "logloss": 3},
            {"removed": 0.9, "top1": 0.3, "logloss": 3}, {"removed": 0.99, "top1": 0.1, "logloss": 4}]
    assert curve_landmarks(rows, "top1") == {"base": 0.2, "first_improves_at_removed": 0.9, "best_removed": 0.9,
                                             "best": 0.3, "first_degrades_at_removed": 0.99}


def test_spectrum_json(tiny_with_tokenizer, tmp_path):
    out = tmp_path / "s.json"
    assert main(["analyze", "spectrum", str(tiny_with_tokenizer), "--json", str(out), "-o", str(tmp_path / "a")]) == 0
    table = json.loads(out.read_text())
    assert [(r["type"], r["layer"]) for r in table][:2] == [("mlp_in", 0), ("mlp_out", 0)]
    model = tf.AutoModelForCausalLM.from_pretrained(tiny_with_tokenizer)
    for r in table:  # exp(entropy of s / sum(s)) of each matrix's singular values, from its own weight
        module = "gate_proj" if r["type"] == "mlp_in" else "down_proj"
        s = torch.linalg.svdvals(getattr(model.model.layers[r["layer"]].mlp, module).weight.detach().double())
        p = s / s.sum()
        assert r["effective_rank"] == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-5)
        assert r["shape"] == list(getattr(model.model.layers[r["layer"]].mlp, module).weight.shape)
    assert len(table) == 2 * 3
    assert (tmp_path / "a" / "effective_rank.png").exists()


def test_flips_agree_with_eval_predictions(tiny_with_tokenizer, tmp_path):
    task = tmp_path / "rows.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in cloze_rows(300, seed=11)))
    run = tmp_path / "run"
    assert main(["search", str(tiny_with_tokenizer), "-t", str(task), "--layers", "all", "--rhos", "0.5,0.1,k=1",
                 "--no-svd-cache", "--select", "paper", "-o", str(run)]) == 0
    best = json.loads((run / "best.json").read_text())["best"]["edits"]
    edit = str(Edit.from_json(best[0]))
    preds = {}
    for name, extra in (("base", []), ("edit", ["-e", edit])):
        assert main(["eval", str(tiny_with_tokenizer), "-t", str(task), "--split", "val", *extra,
                     "--predictions", str(tmp_path / f"{name}.jsonl")]) == 0
        preds[name] = [json.loads(x) for x in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    out = tmp_path / "flips.json"
    assert main(["analyze", "flips", str(run), "--json", str(out), "-o", str(tmp_path / "a")]) == 0
    counts = json.loads(out.read_text())["counts"]
    pairs = [(b["top1"], e["top1"]) for b, e in zip(preds["base"], preds["edit"])]
    assert counts == {"both_right": pairs.count((True, True)), "corrected": pairs.count((False, True)),
                      "newly_wrong": pairs.count((True, False)), "both_wrong": pairs.count((False, False))}


def _sliding_perplexity(model, ids: list[int], window: int, stride: int) -> float:
    """Each token after the first scored once, with the windows the analysis documents, by plain forwards."""
    nll, count, scored = 0.0, 0, 1
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        with torch.no_grad():
            logp = model(torch.tensor([ids[begin:end]])).logits[0].double().log_softmax(-1)
        for j in range(max(scored, begin + 1), end):
            nll -= logp[j - 1 - begin, ids[j]].item()
            count += 1
        scored = end
        if end == len(ids):
            break
    return math.exp(nll / count)


def test_curve_and_perplexity_and_components_run(tiny_with_tokenizer, tmp_path):
    task = tmp_path / "rows.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in cloze_rows(100, seed=2)))
    out = tmp_path / "c.json"
    assert main(["analyze", "curve", str(tiny_with_tokenizer), "-t", str(task), "--type", "mlp_in", "--layer", "1",
                 "--json", str(out), "-o", str(tmp_path / "a")]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["removed"] == 0 and rows[-1]["removed"] == pytest.approx(0.9995)
    # Middle rows against an evaluation of the same val rows under the same edit, made here.
    from laserlm import edited, load_model
    from laserlm.evaluation.evaluate import evaluate
    from laserlm.evaluation.scoring import Scorer
    from laserlm.evaluation.tasks import load_task

    loaded = load_model(str(tiny_with_tokenizer), device="cpu")
    val = load_task(str(task)).select("val", 0, None)
    for row in (rows[1], rows[len(rows) // 2], rows[-1]):
        with edited(loaded.model, [f"mlp_in:1:{row['rho']}"]):
            want = evaluate(Scorer(loaded.model, loaded.tokenizer), val).metrics
        assert row["top1"] == want["top1"] and row["logloss"] == pytest.approx(want["logloss"], abs=1e-6), row
    text = tmp_path / "t.txt"
    text.write_text(" ".join(["the cat sat on the mat and the dog was big"] * 30))
    ppl = tmp_path / "p.json"
    assert main(["analyze", "perplexity", str(tiny_with_tokenizer), "-e", "mlp:all:0.1", "--text", str(text),
                 "--window", "32", "--stride", "16", "--json", str(ppl), "-o", str(tmp_path / "a")]) == 0
    table = json.loads(ppl.read_text())
    model = tf.AutoModelForCausalLM.from_pretrained(tiny_with_tokenizer).eval()
    ids = tiny_tokenizer()(text.read_text())["input_ids"]
    assert table["tokens"] == len(ids) - 1 == 330
    assert table["before"] == pytest.approx(_sliding_perplexity(model, ids, 32, 16), rel=1e-5)
    with edited(model, ["mlp:all:0.1"]):
        assert table["after"] == pytest.approx(_sliding_perplexity(model, ids, 32, 16), rel=1e-5)
    assert table["change"] == pytest.approx(table["after"] / table["before"] - 1)
    comp = tmp_path / "k.json"
    assert main(["analyze", "components", str(tiny_with_tokenizer), "-t", str(task), "-e", "mlp_in:1:k=2",
                 "--split", "all", "--json", str(comp), "-o", str(tmp_path / "a")]) == 0
    assert json.loads(comp.read_text())["bottom_edit"] == {"method": "bottom", "type": "mlp_in", "layer": 1,
                                                            "amount": "k=30"}


def test_seeds_re_evaluates_the_best_edit_under_the_authors_svd(tiny_with_tokenizer, tmp_path):
    from laserlm.core.svd import SVDCache
    from laserlm.evaluation.evaluate import Prepared
    from laserlm.evaluation.scoring import Scorer
    from laserlm.evaluation.tasks import load_task

    task = tmp_path / "rows.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in cloze_rows(200, seed=11)))
    run = tmp_path / "run"
    assert main(["search", str(tiny_with_tokenizer), "-t", str(task), "--layers", "all", "--rhos", "0.5,0.25",
                 "--no-svd-cache", "-o", str(run)]) == 0
    assert main(["analyze", "seeds", str(run), "--seeds", "3"]) == 0
    table = json.loads((run / "analysis_seeds.json").read_text())
    edits = [Edit.from_json(e) for e in table["edits"]]
    model = tf.AutoModelForCausalLM.from_pretrained(tiny_with_tokenizer).eval()
    rows = load_task(str(task)).select("val", 0, None)
    prepared = Prepared(Scorer(model, tiny_tokenizer()), rows)
    for seed, row in zip(range(3), table["seeds"]):
        with edited(model, edits, svd_cache=SVDCache(disk=None, mode="authors", seed=seed)):
            assert row["metrics"] == prepared.score().metrics
    with edited(model, edits, svd_cache=SVDCache(disk=None)):
        assert table["exact"] == prepared.score().metrics
    losses = [r["metrics"]["logloss"] for r in table["seeds"]]
    mean = sum(losses) / 3
    assert table["spread"]["logloss"]["mean"] == pytest.approx(mean)
    assert table["spread"]["logloss"]["sd"] == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in losses) / 2))
    assert table["spread"]["logloss"]["sd"] > 0 and (run / "seeds.png").exists()
    assert main(["report", str(run)]) == 0
    assert "svd_lowrank over 3 seeds" in (run / "report.md").read_text()


def test_components_similarity_of_the_predictions_to_the_answer(tiny_with_tokenizer, tmp_path):
    task = tmp_path / "rows.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in cloze_rows(300, seed=2)))
    comp = tmp_path / "k.json"
    assert main(["analyze", "components", str(tiny_with_tokenizer), "-t", str(task), "-e", "mlp_in:1:0.1",
                 "--split", "all", "--json", str(comp), "-o", str(tmp_path / "a")]) == 0
    table = json.loads(comp.read_text())
    assert table["corrected"], "the edit corrected no row: nothing to compare"
    at = {r["rho"]: r for r in table["similarity"]}
    # Rows the edit corrects are right with its own top components: cosine 1 to the answer, every one of them.
    assert at[0.1]["top"] == pytest.approx(1.0) and at[0.1]["top_top1"] == 1.0
    model = tf.AutoModelForCausalLM.from_pretrained(tiny_with_tokenizer).eval()
    emb = model.get_input_embeddings().weight.detach()
    tok = tiny_tokenizer()
    pred = [tok.convert_tokens_to_ids(r["bottom"].strip()) for r in table["corrected"]]
    gold = [tok.convert_tokens_to_ids(r["answer"].split()[0]) for r in table["corrected"]]
    want = torch.nn.functional.cosine_similarity(emb[pred], emb[gold], dim=-1).mean().item()
    assert at[0.1]["bottom"] == pytest.approx(want, abs=1e-5)  # the removed components' own predictions
    assert (tmp_path / "a" / "components_similarity.png").exists()
