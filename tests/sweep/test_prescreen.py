"""--prescreen: the gradient score equals a finite difference of the loss along the truncation, the
data-free scores equal their definitions on the spectrum, and --budget evaluates exactly the best ranked."""

from __future__ import annotations

import json
import math

import pytest
import torch

from laserlm import Edit, edited, get_layout
from laserlm.cli.main import main
from laserlm.core.methods import mp_threshold
from laserlm.core.ranks import rank_for
from laserlm.core.svd import SVDCache
from laserlm.evaluation.evaluate import Prepared
from laserlm.evaluation.scoring import Scorer
from laserlm.evaluation.tasks import Example
from laserlm.sweep.prescreen import prescreen, shortlist

from conftest import build_tiny, choice_rows, cloze_rows, tiny_tokenizer


def _loss(prepared) -> float:
    """The loss the gradient prescreen differentiates: mean NLL per answer token, full vocabulary, over each cloze
    row's answer and each choice row's correct choice (written here from the paper's definition)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for r in prepared.requests:
            i, role, sub = r.key
            if role == "choice" and sub != prepared.examples[i].label:
                continue
            logits = prepared.scorer.full_logits(prepared.scorer.collate([[r]]))[0].double().log_softmax(-1)
            total -= sum(logits[pos, tok].item() for pos, tok in r.targets)
            count += len(r.targets)
    return total / count


@pytest.mark.parametrize("kind", ["cloze", "choice"])
def test_grad_score_is_the_directional_derivative_of_the_loss(kind):
    model = build_tiny("llama").double()
    if kind == "cloze":
        rows = [Example(r["prompt"], answers=[r["answer"]]) for r in cloze_rows(32, seed=5)]
    else:  # the correct choice is not always the first
        rows = choice_rows(24, seed=5)
        for i, ex in enumerate(rows):
            ex.label = i % len(ex.choices)
    prepared = Prepared(Scorer(model, tiny_tokenizer(), max_tokens=256), rows)
    layout, cache = get_layout(model), SVDCache(disk=None)
    cands = [Edit("svd", "mlp_in", 1, 0.5), Edit("svd", "attn_o", 2, "k=3"), Edit("prune", "mlp_out", 0, 0.5),
             Edit("cluster2", "mlp_in", 2, 0.25)]
    ranked = dict(prescreen("grad", layout, cache, cands, prepared))
    for c in cands:
        w = layout.target(c.type, c.layer).weight
        if c.method == "svd":
            U, S, Vh = torch.linalg.svd(w.detach(), full_matrices=False)
            k = rank_for(c.amount, layout.target(c.type, c.layer).shape)
            direction = (U[:, :k] * S[:k]) @ Vh[:k] - w.detach()  # W_k - W
        else:  # any other edit: along W' - W
            with edited(model, [c], svd_cache=SVDCache(disk=None)):
                direction = w.detach().clone()
            direction -= w.detach()
        t, original = 1e-2, w.detach().clone()  # some of the forward runs in float32 (rotary tables)
        with torch.no_grad():
            w.copy_(original + t * direction)
            up = _loss(prepared)
            w.copy_(original - t * direction)
            down = _loss(prepared)
            w.copy_(original)
        derivative = (up - down) / (2 * t)  # d/dt L(W + t (W_k - W)) at 0
        assert ranked[c] == pytest.approx(-derivative, rel=1e-3)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("kind", ["mp", "snr"])
def test_data_free_scores_follow_their_definitions(kind):
    model = build_tiny("gpt2")
    layout, cache = get_layout(model), SVDCache(disk=None)
    cands = [Edit("svd", t, layer, a) for t in ("mlp_in", "mlp_out") for layer in range(3) for a in (0.5, 0.1)]
    order = prescreen(kind, layout, cache, cands)
    assert [s for _, s in order] == sorted((s for _, s in order), reverse=True)
    for c, score in order:
        w = layout.target(c.type, c.layer).weight.detach()
        s = torch.linalg.svdvals(w.double())
        edge = mp_threshold(w)
        k = rank_for(c.amount, layout.target(c.type, c.layer).shape)
        if kind == "mp":
            removed = s[k:]
            assert score == pytest.approx(((removed[removed <= edge] ** 2).sum() / (removed ** 2).sum()).item(), rel=1e-5)
        else:
            snr = ((s[s > edge] ** 2).sum() / (s[s <= edge] ** 2).sum()).item()  # all noise: 0, ranked first
            k_mp = max(1, int((s > edge).sum()))
            assert score == pytest.approx(-math.log10(max(snr, 1e-30)) - 1e-3 * abs(math.log(k / k_mp)), rel=1e-6)


def test_budget_evaluates_exactly_the_best_ranked(tiny_with_tokenizer, tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in cloze_rows(200, seed=2)))
    out = tmp_path / "run"
    argv = ["search", str(tiny_with_tokenizer), "-t", str(rows), "--rhos", "0.5,0.2,k=1", "--no-svd-cache",
            "--prescreen", "grad", "--budget", "4", "-o", str(out)]
    assert main(argv) == 0
    order = [Edit.from_json(r["edit"]) for r in json.loads((out / "prescreen.json").read_text())["order"]]
    assert len(order) == 2 * 3 * 3
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {Edit.from_json(r["edits"][0]) for r in results if r["edits"]} == set(order[:4])
    assert main(argv) == 0 and len((out / "results.jsonl").read_text().splitlines()) == 1 + 4  # resumed: nothing new
    assert "## Prescreen: grad" in (out / "report.md").read_text()
    capsys.readouterr()
    assert main(argv[:-6] + ["--budget", "4", "-o", str(out)]) == 2
    assert "give both" in capsys.readouterr().err


def test_grad_matrix_ranks_matrices_and_keeps_all_their_candidates():
    model = build_tiny("llama")
    rows = [Example(r["prompt"], answers=[r["answer"]]) for r in cloze_rows(32, seed=5)]
    prepared = Prepared(Scorer(model, tiny_tokenizer(), max_tokens=256), rows)
    layout, cache = get_layout(model), SVDCache(disk=None)
    cands = [Edit(m, t, layer, a) for t in ("mlp_in", "mlp_out") for layer in range(3) for a in (0.5, 0.1)
             for m in ("svd", "cluster2")]
    single = dict(prescreen("grad", layout, cache, cands, prepared))
    ranked = prescreen("grad-matrix", layout, cache, cands, prepared)
    assert dict(ranked) == pytest.approx(single)  # the same scores, grouped by matrix
    best = {}
    for c, score in single.items():
        best[(c.type, c.layer)] = max(score, best.get((c.type, c.layer), -math.inf))
    top2 = sorted(best, key=lambda m: -best[m])[:2]
    kept = shortlist(ranked, "grad-matrix", 2)
    assert {(c.type, c.layer) for c in kept} == set(top2) and len(kept) == 2 * 4
    assert shortlist(ranked, "grad", 3) == [c for c, _ in ranked[:3]]


def test_snr_ranks_a_noise_matrix_before_a_planted_signal():
    """SNR reads how much of a matrix is above the noise edge: a pure-noise matrix has nothing to lose, so each of
    its candidates ranks before every candidate of a matrix holding a strong rank-3 signal."""
    model = build_tiny("gpt2")
    layout, cache = get_layout(model), SVDCache(disk=None)
    signal = layout.target("mlp_in", 1)
    g = torch.Generator().manual_seed(0)
    m, n = signal.weight.shape
    u, _ = torch.linalg.qr(torch.randn(m, 3, generator=g))
    v, _ = torch.linalg.qr(torch.randn(n, 3, generator=g))
    with torch.no_grad():
        signal.weight.copy_(u @ torch.diag(torch.tensor([60.0, 40.0, 30.0])) @ v.T + 0.05 * torch.randn(m, n, generator=g))
        noise = layout.target("mlp_in", 2).weight
        noise.copy_(0.05 * torch.randn(noise.shape, generator=g))
    cands = [Edit("svd", "mlp_in", layer, a) for layer in (1, 2) for a in (0.5, 0.1)]
    order = [c.layer for c, _ in prescreen("snr", layout, cache, cands)]
    assert order == [2, 2, 1, 1]
