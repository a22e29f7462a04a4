"""Ray with GPUs asked for: never a hang. Actors are capped by the cluster's GPUs; a worker whose results
would not be comparable (another device) stops the run with one clear line; an empty RAY_ADDRESS is unset."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

import laserlm.sweep.ray_backend as ray_backend
from laserlm.cli.main import main

from conftest import cloze_rows, optional

ray = optional("ray")


@pytest.fixture
def task(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in cloze_rows(40)))
    return path


def _error_line(capsys) -> str:
    """The search's progress lines come first; the error is one line, last, without a traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("laser: error:")]
    assert len(lines) == 1 and err.rstrip("\n").endswith(lines[0]) and "Traceback" not in err
    return lines[0]


def _argv(model, task, out, *extra):
    device = [] if "--device" in extra else ["--device", "cpu"]  # Ray workers are processes the test cannot patch
    return ["search", str(model), "-t", str(task), "--layers", "1-2", "--rhos", "0.5", "--no-svd-cache",
            "--backend", "ray", "-o", str(out), *device, *extra]


def test_an_empty_ray_address_means_a_local_cluster(tiny_with_tokenizer, task, tmp_path, monkeypatch):
    assert not ray.is_initialized()
    monkeypatch.setenv("RAY_ADDRESS", "")
    assert main(_argv(tiny_with_tokenizer, task, tmp_path / "run", "--workers", "1")) == 0
    assert len((tmp_path / "run" / "results.jsonl").read_text().splitlines()) == 1 + 4


@pytest.fixture(scope="module")
def one_gpu_cluster():
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)  # declared, not real
    yield
    ray.shutdown()


def test_more_gpus_per_worker_than_the_cluster_has_is_refused_at_once(one_gpu_cluster, tiny_with_tokenizer,
                                                                       task, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_argv(tiny_with_tokenizer, task, out, "--gpus-per-worker", "2", "--device", "auto")) == 2
    err = _error_line(capsys)
    assert "each Ray worker asks for 2 GPU(s) but the Ray cluster has 1" in err
    assert len((out / "results.jsonl").read_text().splitlines()) == 1  # refused before any actor: the base row only
    assert not (out / "workers.log").exists()


def test_gpu_workers_on_cpu_finish_with_device_cpu(one_gpu_cluster, tiny_with_tokenizer, task, tmp_path):
    out = tmp_path / "run"
    assert main(_argv(tiny_with_tokenizer, task, out, "--gpus-per-worker", "1", "--device", "cpu")) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 1 + 4


def test_a_worker_on_another_device_stops_the_run_with_one_line(one_gpu_cluster, tiny_with_tokenizer, task,
                                                                 tmp_path, capsys, monkeypatch):
    # --device auto with GPU workers: the driver expects CUDA results; the worker is made to load on the CPU
    # (whatever this machine has), so its rows are not comparable.
    real = ray_backend.ray_sweep
    monkeypatch.setattr(ray_backend, "ray_sweep", lambda spec, *a, **k: real(replace(spec, device="cpu"), *a, **k))
    out = tmp_path / "run"
    assert main(_argv(tiny_with_tokenizer, task, out, "--gpus-per-worker", "1", "--device", "auto")) == 2
    assert "device: cpu on the worker, cuda here" in _error_line(capsys)
    assert len((out / "results.jsonl").read_text().splitlines()) == 1  # only the driver's base row
