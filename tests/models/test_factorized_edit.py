"""A folder written with --factorized can be edited again and re-exported: edits change the factors, and
what is saved reloads with the same logits, dense or factorized."""

from __future__ import annotations

import pytest
import torch

from laserlm import UserError, edited, load_model
from laserlm.cli.main import main
from laserlm.models.export import export
from laserlm.models.factorized import LowRankLinear
from laserlm.models.loading import Loaded

from conftest import build_tiny, tiny_inputs


@pytest.fixture(params=["llama", "gpt2"])  # gpt2: factors standing in for a transposed Conv1D
def fact_folder(request, tmp_path):
    model = build_tiny(request.param)
    export(Loaded(model, None, "tiny", "folder"), ["mlp_in:all:0.25"], tmp_path / "fact", factorized=True)
    return request.param, tmp_path / "fact"


def _rank(weight: torch.Tensor) -> int:
    return int(torch.linalg.matrix_rank(weight.detach().float(), rtol=1e-4))


def test_an_edit_of_a_factorized_matrix_changes_its_factors(fact_folder):
    arch, folder = fact_folder
    loaded = load_model(str(folder))
    module = next(m for m in loaded.model.modules() if isinstance(m, LowRankLinear))
    assert module.rank == 8 and _rank(module.weight) == 8
    before = module.weight.detach().clone()
    x = tiny_inputs()
    with edited(loaded.model, ["mlp_in:0:k=4"]):
        assert _rank(module.weight) == 4
        u, s, vh = torch.linalg.svd(before, full_matrices=False)
        torch.testing.assert_close(module.weight, (u[:, :4] * s[:4]) @ vh[:4], atol=1e-5, rtol=1e-4)
        edited_logits = loaded.model(x).logits
    assert torch.equal(module.weight, before)  # restored
    assert not torch.equal(edited_logits, loaded.model(x).logits)


def test_prune_of_a_factorized_matrix_is_refused(fact_folder):
    _, folder = fact_folder
    loaded = load_model(str(folder))
    with pytest.raises(UserError, match="rank-8 factors"):
        with edited(loaded.model, ["prune/mlp_in:0:0.5"]):
            pass


@pytest.mark.parametrize("factorized", [False, True])
def test_reexporting_a_factorized_folder_keeps_every_matrix(fact_folder, tmp_path, factorized):
    arch, folder = fact_folder
    loaded = load_model(str(folder))
    x = tiny_inputs()
    with edited(loaded.model, ["mlp_out:1:0.25", "mlp_in:2:k=4"]):
        expected = loaded.model(x).logits
    args = ["apply", str(folder), "-e", "mlp_out:1:0.25", "-e", "mlp_in:2:k=4", "-o", str(tmp_path / "again"),
            "--device", "cpu"] + (["--factorized"] if factorized else [])
    assert main(args) == 0
    again = load_model(str(tmp_path / "again"))
    torch.testing.assert_close(again.model(x).logits, expected, atol=1e-4, rtol=1e-4)
    mlp_in = [m for n, m in again.model.named_modules() if n.endswith(("gate_proj", "c_fc"))]
    ranks = [_rank(m.weight) for m in mlp_in]
    assert ranks == [8, 8, 4]  # layer 1's mlp_in was never touched again: still rank 8, not 32
    assert all(isinstance(m, LowRankLinear) for m in mlp_in) == factorized
