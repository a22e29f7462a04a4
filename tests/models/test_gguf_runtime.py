"""The GGUF file `laser apply --gguf` writes, run by a real llama.cpp (xllamacpp's prebuilt wheel): its greedy
tokens match transformers' reading of the same file, and differ from the unedited file's."""

import pytest
import torch

from conftest import llama_cpp, needs_demo

PROMPTS = ["The capital of France is", "Water boils at a temperature of", "The first president of the United States was"]
NEW = 12


def _llama_cpp(path, prompts):
    return [r["choices"][0]["text"] for r in llama_cpp(path, [{"prompt": p, "n_predict": NEW} for p in prompts])]


def _transformers(path, ids_list):
    from laserlm.models.loading import load_model

    loaded = load_model(str(path), device="cpu")
    out = []
    for ids in ids_list:
        x = torch.tensor([ids])
        with torch.no_grad():
            y = loaded.model.generate(x, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                                      attention_mask=torch.ones_like(x), pad_token_id=0)
        out.append(loaded.tokenizer.decode(y[0, len(ids):]))
    return out


@needs_demo
def test_llama_cpp_runs_the_written_file_as_transformers_reads_it(tmp_path):
    from laserlm.cli.main import main
    from laserlm.models.loading import demo_path, load_model

    out = tmp_path / "edited.gguf"
    assert main(["apply", "demo", "-e", "mlp_out:28:0.01", "--gguf", str(out), "--device", "cpu"]) == 0
    tok = load_model("demo", device="cpu").tokenizer
    ids_list = [tok(p)["input_ids"] for p in PROMPTS]
    runtime = _llama_cpp(out, ids_list)
    assert runtime == _transformers(out, ids_list)
    assert runtime != _llama_cpp(demo_path(), ids_list)


@needs_demo
def test_a_gguf_written_from_an_hf_folder_runs_in_llama_cpp_as_the_folder_does(tmp_path):
    """demo -> dense HF folder (bfloat16) -> a complete GGUF from that folder, with one more edit: llama.cpp, which
    tokenizes the prompt text itself from the written metadata, gives the folder's own greedy text."""
    from laserlm.cli.main import main
    from laserlm.core.edits import edited
    from laserlm.models.loading import load_model

    folder, out = tmp_path / "folder", tmp_path / "from-folder.gguf"
    assert main(["apply", "demo", "-e", "mlp_out:28:0.01", "-o", str(folder), "--device", "cpu"]) == 0
    assert main(["apply", str(folder), "-e", "mlp_in:27:0.1", "--gguf", str(out), "--device", "cpu"]) == 0
    loaded = load_model(str(folder), device="cpu", dtype="float32")
    ids_list = [loaded.tokenizer(p)["input_ids"] for p in PROMPTS]
    want = []
    with edited(loaded.model, ["mlp_in:27:0.1"]), torch.no_grad():
        for ids in ids_list:
            x = torch.tensor([ids])
            y = loaded.model.generate(x, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                                      attention_mask=torch.ones_like(x), pad_token_id=0)
            want.append(loaded.tokenizer.decode(y[0, len(ids):]))
    got = llama_cpp(out, [{"prompt": p, "n_predict": NEW} for p in PROMPTS])
    assert [r["usage"]["prompt_tokens"] for r in got] == [len(ids) for ids in ids_list]
    assert [r["choices"][0]["text"] for r in got] == want
