"""laser apply --gguf: byte identity of everything not edited, requantization round trips for each --quant, the
llama rope permutation of q/k, and on the demo the issue's checks (the edited tensor near the dense edit, logits
nearer the edited model's than the source's)."""

import numpy as np
import pytest
import torch

from conftest import needs_demo
from laserlm.errors import UserError
from laserlm.models.gguf_out import _llama_permute, dequantize, target_type, write_gguf

import gguf

ROWS, COLS, HEADS = 64, 96, 4


def _tiny_gguf(path, types=("Q4_1", "Q8_0", "F32")):
    """A one-block llama GGUF: ffn_down in types[0], attn_q (rope-permuted rows) in types[1], a norm in F32."""
    g = np.random.default_rng(0)
    down = g.standard_normal((ROWS, COLS)).astype(np.float32)
    q = g.standard_normal((ROWS, ROWS)).astype(np.float32)
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_block_count(1)
    w.add_head_count(HEADS)
    w.add_head_count_kv(HEADS)
    w.add_string("general.name", "tiny")
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    for name, data, kind in (("blk.0.ffn_down.weight", down, types[0]), ("blk.0.attn_q.weight", _llama_permute(q, HEADS), types[1]),
                             ("blk.0.attn_norm.weight", np.ones(ROWS, np.float32), types[2])):
        qt = gguf.GGMLQuantizationType[kind]
        raw = gguf.quants.quantize(data, qt) if kind not in ("F32",) else data
        w.add_tensor(name, raw, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = gguf.GGUFReader(str(path))
    t = {x.name: x for x in r.tensors}
    # what laserlm would have loaded: the dequantized tensors, q un-permuted back to HF's row order
    return t, torch.tensor(dequantize(t["blk.0.ffn_down.weight"])), torch.tensor(q)


def _low_rank(w: torch.Tensor, k: int) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(w.double(), full_matrices=False)
    return (U[:, :k] * S[:k] @ Vh[:k]).float()


def _rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)) / np.linalg.norm(b))


def test_same_type_is_written_in_place_and_everything_else_is_byte_identical(tmp_path):
    src, out = tmp_path / "src.gguf", tmp_path / "out.gguf"
    tensors, down, _ = _tiny_gguf(src)
    edit = _low_rank(down, 3)
    report = write_gguf(src, out, {"model.layers.0.mlp.down_proj": (down, edit)}, log=lambda m: None)
    assert report == {"changed": {"blk.0.ffn_down.weight": "Q4_1"}, "in_place": True, "notes": []}
    a, b = src.read_bytes(), out.read_bytes()
    t = tensors["blk.0.ffn_down.weight"]
    lo, hi = t.data_offset, t.data_offset + t.n_bytes
    assert len(a) == len(b) and a[:lo] == b[:lo] and a[hi:] == b[hi:] and a[lo:hi] != b[lo:hi]
    new = {x.name: x for x in gguf.GGUFReader(str(out)).tensors}["blk.0.ffn_down.weight"]
    assert _rel(dequantize(new), edit.numpy()) < 0.15
    assert _rel(dequantize(new), edit.numpy()) < _rel(down.numpy(), edit.numpy())


@pytest.mark.parametrize("quant,bound", [("F32", 1e-7), ("F16", 1e-3), ("BF16", 1e-2), ("Q8_0", 1e-2),
                                         ("Q5_1", 5e-2), ("Q5_0", 6e-2), ("Q4_1", 0.1), ("Q4_0", 0.12)])
def test_each_quant_round_trips_within_its_precision_and_keeps_the_rest(tmp_path, quant, bound):
    src, out = tmp_path / "src.gguf", tmp_path / "out.gguf"
    tensors, down, q = _tiny_gguf(src, types=("Q8_0", "Q8_0", "F32"))
    edit = _low_rank(down, 5)
    qedit = _low_rank(q, 7)
    report = write_gguf(src, out, {"model.layers.0.mlp.down_proj": (down, edit),
                                   "model.layers.0.self_attn.q_proj": (q, qedit)}, quant=quant, log=lambda m: None)
    assert report["in_place"] == (quant == "Q8_0")
    reader = gguf.GGUFReader(str(out))
    new = {x.name: x for x in reader.tensors}
    assert new["blk.0.ffn_down.weight"].tensor_type.name == quant
    assert _rel(dequantize(new["blk.0.ffn_down.weight"]), edit.numpy()) < bound
    # q is stored in llama.cpp's rope row order: the edit went through the same permutation
    assert _rel(dequantize(new["blk.0.attn_q.weight"]), _llama_permute(qedit.numpy(), HEADS)) < bound
    assert np.array_equal(new["blk.0.attn_norm.weight"].data, tensors["blk.0.attn_norm.weight"].data)
    src_fields = gguf.GGUFReader(str(src)).fields
    for name, field in src_fields.items():
        if not name.startswith("GGUF."):
            assert reader.fields[name].contents() == field.contents(), name


def test_types_gguf_cannot_quantize_go_to_the_nearest_and_say_so():
    assert target_type("Q4_K", "same")[0] == "Q4_1" and "written as Q4_1" in target_type("Q4_K", "same")[1]
    assert target_type("Q6_K", "same")[0] == "Q8_0"
    assert target_type("Q4_K", "F16") == ("F16", None)


def test_a_matrix_the_file_does_not_hold_is_refused(tmp_path):
    src = tmp_path / "src.gguf"
    _, down, _ = _tiny_gguf(src)
    with pytest.raises(UserError, match="no tensor in the source GGUF"):
        write_gguf(src, tmp_path / "o.gguf", {"model.layers.3.mlp.down_proj": (down, down)})
    with pytest.raises(UserError, match="does not match the loaded weight"):
        write_gguf(src, tmp_path / "o.gguf", {"model.layers.0.mlp.down_proj": (down.flip(0), down)})


@needs_demo
def test_laser_apply_demo_gguf_edits_one_tensor_and_transformers_reads_the_edit(tmp_path, capsys):
    from laserlm.cli.main import main
    from laserlm.core.edits import edited
    from laserlm.models.loading import demo_path, load_model

    out = tmp_path / "out.gguf"
    assert main(["apply", "demo", "-e", "mlp_out:28:0.01", "--gguf", str(out), "--device", "cpu"]) == 0
    assert "in place" in capsys.readouterr().out
    src = demo_path()
    a, b = src.read_bytes(), out.read_bytes()
    t = {x.name: x for x in gguf.GGUFReader(str(src)).tensors}["blk.28.ffn_down.weight"]
    lo, hi = t.data_offset, t.data_offset + t.n_bytes
    assert len(a) == len(b) and a[:lo] == b[:lo] and a[hi:] == b[hi:]
    base = load_model("demo", device="cpu")
    ids = base.tokenizer("The capital of France is Paris, and the capital of Italy is", return_tensors="pt").input_ids
    with torch.no_grad():
        source_logits = base.model(ids).logits
        with edited(base.model, ["mlp_out:28:0.01"]) as steps:
            dense = steps[0].target.weight.detach().clone()
            edited_logits = base.model(ids).logits
        new = {x.name: x for x in gguf.GGUFReader(str(out)).tensors}["blk.28.ffn_down.weight"]
        assert _rel(dequantize(new), dense.numpy()) < 0.15
        written = load_model(str(out), device="cpu").model(ids).logits
    assert (written - edited_logits).norm() < 0.5 * (written - source_logits).norm()
