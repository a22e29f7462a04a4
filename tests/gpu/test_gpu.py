"""On a CUDA machine: bfloat16 and float32 searches agree, device maps work end to end, memory stays bounded.

Marked `gpu`, skipped without CUDA (CI has none). Run on a GPU machine with: pytest -m gpu tests/gpu
"""

from __future__ import annotations

import json

import pytest
import torch

from laserlm.cli.main import main

pytestmark = pytest.mark.gpu


def _search(out, *extra, model="demo", limit="200"):
    return main(["search", model, "-t", "bb_wikidata", "--layers", "24-29", "--rhos", "0.1,0.01",
                 "--limit", limit, "--device", "cuda", "-o", str(out), *extra])


def test_bfloat16_and_float32_select_the_same_edit(tmp_path):
    assert _search(tmp_path / "f32") == 0
    assert _search(tmp_path / "bf16", "--dtype", "bfloat16") == 0
    best = [json.loads((tmp_path / d / "best.json").read_text()) for d in ("f32", "bf16")]
    assert best[0]["best"]["edits"] == best[1]["best"]["edits"]
    assert abs(best[0]["best"]["val"] - best[1]["best"]["val"]) <= 0.02


def test_search_test_and_compose_under_device_map_auto(tmp_path):
    out = tmp_path / "map"
    assert main(["search", "demo", "-t", "bb_wikidata", "--layers", "26-29", "--rhos", "0.1,0.01", "--limit", "100",
                 "--device-map", "auto", "--compose", "-o", str(out)]) == 0
    best = json.loads((out / "best.json").read_text())
    assert "composed" in best and best["base"]["test"] is not None


def test_peak_memory_is_weights_plus_a_bounded_workspace(tmp_path):
    torch.cuda.reset_peak_memory_stats()
    assert _search(tmp_path / "mem", "--max-tokens", "65536", limit="300") == 0
    peak = torch.cuda.max_memory_allocated()
    weights = 135e6 * 4  # SmolLM2-135M in float32
    assert peak <= weights + 4 * (1 << 30), f"peak {peak / 2**30:.2f} GiB"
