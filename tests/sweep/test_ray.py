"""The Ray backend: same results as local; a killed worker's candidates run elsewhere, exactly once."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import pytest
import transformers as tf

from laserlm.cli.main import main

from conftest import cloze_rows, optional, tiny_tokenizer

ray = optional("ray")


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def deep_tiny(tmp_path):
    """Eight layers, so the sweep has eight layer groups to spread over workers."""
    import torch

    torch.manual_seed(0)
    config = tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=8, num_attention_heads=4,
                            num_key_value_heads=2, vocab_size=97, max_position_embeddings=64)
    folder = tmp_path / "deep"
    tf.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    task = tmp_path / "rows.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in cloze_rows(600, seed=5)))
    return folder, task


def _search(folder, task, out, *extra):
    return main(["search", str(folder), "-t", str(task), "--types", "mlp_in,mlp_out", "--layers", *extra,
                 "--no-svd-cache", "--device", "cpu", "-o", str(out)])


def _metrics(out):
    return {json.loads(line)["key"]: json.loads(line)["metrics"] for line in (out / "results.jsonl").read_text().splitlines()}


def test_ray_and_local_give_identical_results(ray_session, deep_tiny, tmp_path):
    import torch

    folder, task = deep_tiny
    args = ("2-7", "--rhos", "0.5")  # 12 candidates
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each Ray worker: one reduction order everywhere, so the same bits
    try:
        assert _search(folder, task, tmp_path / "local", *args) == 0
        assert _search(folder, task, tmp_path / "ray", *args, "--backend", "ray", "--workers", "2") == 0
    finally:
        torch.set_num_threads(threads)
    local, remote = _metrics(tmp_path / "local"), _metrics(tmp_path / "ray")
    assert len(local) == 13 and local == remote
    best = [json.loads((tmp_path / d / "best.json").read_text()) for d in ("local", "ray")]
    assert best[0] == best[1]


def _log(run) -> list[dict]:
    path = run / "workers.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_killed_worker_is_replaced_and_nothing_is_lost(ray_session, deep_tiny, tmp_path):
    """This run's own worker is killed (by the pid its workers.log reports) once it has started a layer group:
    its unfinished groups run again in a new process, and every candidate is stored exactly once."""
    folder, task = deep_tiny
    run = tmp_path / "run"
    killed = []

    def killer():
        while not killed and not done.is_set():
            started = [e for e in _log(run) if e["event"] == "start"]
            if started:
                os.kill(started[0]["pid"], signal.SIGKILL)
                killed.append(started[0])
            time.sleep(0.002)

    done = threading.Event()
    watcher = threading.Thread(target=killer)
    watcher.start()
    try:
        code = _search(folder, task, run, "all", "--rhos", "0.9,0.5,0.2,k=1", "--backend", "ray", "--workers", "2")
    finally:
        done.set()
        watcher.join()
    assert killed, "no worker started a layer group"
    assert code == 0
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    edits = [json.dumps(r["edits"]) for r in rows]
    assert len(edits) == len(set(edits)) == 1 + 8 * 2 * 4
    events = _log(run)
    victim = killed[0]["pid"]
    # The victim was killed at its first group, so the later groups of its chunk ran in a third process.
    pids = {e["pid"] for e in events}
    assert len(pids) == 3, "two workers and the one that replaced the killed worker"
    assert all(e["layer"] == killed[0]["layer"] for e in events if e["pid"] == victim)
    assert {e["layer"] for e in events if e["event"] == "done"} == set(range(8))


def test_without_ray_the_backend_explains_how_to_install(tiny_with_tokenizer, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    task = tmp_path / "t.jsonl"
    task.write_text('{"prompt": "the cat", "answer": "sat"}\n')
    assert main(["search", str(tiny_with_tokenizer), "-t", str(task), "--backend", "ray", "-o", str(tmp_path / "o")]) == 2
    assert "pip install 'laserlm[ray]'" in capsys.readouterr().err
