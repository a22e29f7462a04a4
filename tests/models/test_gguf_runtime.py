"""The GGUF file `laser apply --gguf` writes, run by a real llama.cpp (xllamacpp's prebuilt wheel): its greedy
tokens match transformers' reading of the same file, and differ from the unedited file's."""

import pytest
import torch

from conftest import needs_demo, optional

PROMPTS = ["The capital of France is", "Water boils at a temperature of", "The first president of the United States was"]
NEW = 12


def _llama_cpp(path, ids_list):
    xlc = optional("xllamacpp")
    params = xlc.CommonParams()
    params.model.path = str(path)
    params.n_ctx = 128
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = 1
    server = xlc.Server(params)
    out = []
    for ids in ids_list:
        r = server.handle_completions({"prompt": ids, "n_predict": NEW, "temperature": 0.0, "top_k": 1,
                                       "cache_prompt": False, "ignore_eos": True})
        out.append(r["choices"][0]["text"])
    del server
    return out


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
