"""`laser search --backend ray`: the sweep's candidates, grouped by layer, on Ray actors.

Each actor loads the model once and keeps a Sweeper whose prefix walk carries over between the layer
groups it is given (a contiguous range, in increasing order), so it pays one partial forward to reach
its first layer and one block per later layer. Finished groups stream back to the driver, which writes
them to the same fsynced store as the local backend. An actor that dies is restarted by Ray
(`max_restarts`) and its unfinished calls run again (`max_task_retries`); the store drops a key it
already holds, so the results never have a hole or a duplicate. Ray is imported only here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..core.edits import Edit
from ..errors import UserError


@dataclass
class WorkerSpec:
    """Everything a worker needs to rebuild the driver's val Sweeper, and nothing it must not share."""

    model: str
    task: str
    context: dict
    dtype: str = "float32"
    device: str = "cpu"
    revision: str | None = None
    module_patterns: list[str] | None = None
    data: str | None = None
    split_seed: int = 0
    limit: int | None = None
    batch_size: int | None = None
    svd: str = "exact"
    svd_disk: bool = True


class SweepWorker:
    """The body of a Ray actor (wrapped by `ray.remote` in `ray_sweep`)."""

    def __init__(self, spec: WorkerSpec, threads: int):
        import torch

        from ..core.layout import get_layout
        from ..evaluation.evaluate import Prepared
        from ..models.loading import load_model
        from ..evaluation.scoring import Scorer
        from .sweep import Sweeper
        from .store import ResultStore
        from ..core.svd import SVDCache
        from ..evaluation.tasks import load_task

        torch.set_num_threads(max(1, threads))  # never more threads than the CPUs Ray gave us
        loaded = load_model(spec.model, dtype=spec.dtype, device=spec.device, revision=spec.revision)
        rows = load_task(spec.task, spec.data).select("val", spec.split_seed, spec.limit)
        cache = SVDCache(disk="default" if spec.svd_disk and spec.svd == "exact" else None, mode=spec.svd)
        self.sweeper = Sweeper(loaded.model, get_layout(loaded.model, spec.module_patterns),
                               Prepared(Scorer(loaded.model, loaded.tokenizer, batch_size=spec.batch_size), rows),
                               ResultStore(None), spec.context, "val", cache)

    def run(self, edits: list[dict]) -> list[dict]:
        done: list[dict] = []
        self.sweeper.sweep([Edit.from_json(e) for e in edits], on_done=done.append, base=False)
        return done


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--backend ray needs Ray: pip install 'laserlm[ray]'") from None
    return ray


def contiguous_chunks(layers: list[int], weights: dict[int, float], n: int) -> list[list[int]]:
    """Split sorted layers into at most n contiguous runs of about equal total weight."""
    total = sum(weights[layer] for layer in layers)
    chunks, cur, acc = [], [], 0.0
    for layer in layers:
        cur.append(layer)
        acc += weights[layer]
        if acc >= total * (len(chunks) + 1) / n and len(chunks) < n - 1:
            chunks.append(cur)
            cur = []
    if cur:
        chunks.append(cur)
    return chunks


def ray_sweep(spec: WorkerSpec, pending: list[Edit], store, n_layers: int, *, workers: int | None = None,
              gpus_per_worker: float = 0.0, address: str | None = None, on_done=None) -> None:
    """Run single-edit candidates not yet in `store` on Ray actors; each finished row is stored at once."""
    ray = _import_ray()
    if not pending:
        return
    address = address or os.environ.get("RAY_ADDRESS")
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        by_layer: dict[int, list[Edit]] = {}
        for c in pending:
            by_layer.setdefault(c.layer, []).append(c)
        layers = sorted(by_layer)
        cpus = ray.available_resources().get("CPU", 1)
        n = workers or max(1, int(cpus))
        # A candidate at layer l costs about n_layers - l blocks.
        chunks = contiguous_chunks(layers, {l: len(by_layer[l]) * (n_layers - l) for l in layers}, n)
        actor_cls = ray.remote(max_restarts=-1, max_task_retries=-1)(SweepWorker)
        actors = [actor_cls.options(num_cpus=1, num_gpus=gpus_per_worker).remote(spec, 1) for _ in chunks]
        refs = {}
        for actor, chunk in zip(actors, chunks):
            for layer in chunk:  # an actor runs its calls in order: its prefix walk only goes up
                refs[actor.run.remote([c.to_json() for c in by_layer[layer]])] = layer
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            for ref in ready:
                for row in ray.get(ref):
                    if row["key"] not in store:
                        store.append(row)
                        on_done and on_done(row)
                del refs[ref]
        for actor in actors:
            ray.kill(actor)
    finally:
        if started_here:
            ray.shutdown()
