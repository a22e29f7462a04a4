"""`laser search --backend ray`: the sweep's candidates, grouped by layer, on Ray actors.

Each actor loads the model once and keeps a Sweeper whose prefix walk carries over between the layer
groups it is given (a contiguous range, in increasing order), so it pays one partial forward to reach
its first layer and one block per later layer. Finished groups stream back to the driver, which writes
them to the same fsynced store as the local backend. An actor that dies is restarted by Ray
(`max_restarts`, bounded: a worker that dies at every start ends the run with a clear error) and its
unfinished calls run again (`max_task_retries`); the store drops a key it already holds, so the results
never have a hole or a duplicate. Each worker keys its rows with its own model identity, row hash and
numerics (its context), and the driver stores its rows only if that context is the driver's own. Ray is
imported only here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..core.edits import Edit
from ..errors import UserError, first_line
from .store import short

MAX_RESTARTS = 3


@dataclass
class WorkerSpec:
    """Everything a worker needs to rebuild the driver's val Sweeper, and nothing it must not share.

    Paths are absolute (resolved on the driver); `task_identity` is the driver's name for the task.
    """

    model: str
    task: str
    task_identity: str
    dtype: str = "float32"
    device: str = "cpu"
    revision: str | None = None
    module_patterns: list[str] | None = None
    data: str | None = None
    split_seed: int = 0
    limit: int | None = None
    batch_size: int | None = None
    max_tokens: int | None = None
    svd: str = "exact"
    seed: int = 0
    svd_disk: bool = True
    protocol: str = "paper"
    lm_eval_include: str | None = None
    metrics: list[str] | None = None
    gen_tokens: int = 10
    min_new_tokens: int = 0
    log: str | None = None  # RUN_DIR/workers.log: each worker's layer groups, started and done (where writable)


class SweepWorker:
    """The body of a Ray actor (wrapped by `ray.remote` in `ray_sweep`). The model loads on the first
    call, so a load error reaches the driver as that call's error rather than as a dead actor."""

    def __init__(self, spec: WorkerSpec, threads: int):
        self.spec, self.threads, self.sweeper = spec, threads, None

    def _load(self):
        import torch

        from ..core.layout import get_layout
        from ..core.svd import SVDCache
        from ..evaluation.evaluate import Prepared
        from ..evaluation.generation import GenSettings
        from ..evaluation.metrics import choose_metrics
        from ..evaluation.scoring import Scorer
        from ..evaluation.tasks import load_task
        from ..models.loading import load_model
        from .job import text_numerics
        from .store import ResultStore, rows_hash
        from ..models.identity import versions
        from .sweeper import Sweeper

        spec = self.spec
        torch.set_num_threads(max(1, self.threads))  # never more threads than the CPUs Ray gave us
        loaded = load_model(spec.model, dtype=spec.dtype, device=spec.device, revision=spec.revision)
        task = load_task(spec.task, spec.data, spec.protocol, spec.lm_eval_include)
        task.drop_long_answers(loaded.tokenizer)
        rows = task.select("val", spec.split_seed, spec.limit)
        metrics = choose_metrics(task.kind, spec.metrics, True)
        device = next(loaded.model.parameters()).device.type
        gen = GenSettings(spec.gen_tokens, spec.min_new_tokens)
        cache = SVDCache(disk="default" if spec.svd_disk else None, mode=spec.svd, seed=spec.seed)
        # This worker's own identity: the driver stores a row only if its key matches the driver's.
        context = {"model": loaded.identity, "task": spec.task_identity, "rows": rows_hash(rows),
                   "dtype": spec.dtype, "svd": cache.label, "device": device,
                   **text_numerics(metrics, gen), "versions": versions()}
        self.sweeper = Sweeper(loaded.model, get_layout(loaded.model, spec.module_patterns),
                               Prepared(Scorer(loaded.model, loaded.tokenizer, batch_size=spec.batch_size,
                                               max_tokens=spec.max_tokens), rows, metrics, gen),
                               ResultStore(None), context, "val", cache)

    def run(self, edits: list[dict]) -> tuple[dict, list[dict]]:
        if self.sweeper is None:
            self._load()
        layer = edits[0]["layer"] if edits else None
        self._note("start", layer)
        done: list[dict] = []
        self.sweeper.sweep([Edit.from_json(e) for e in edits], on_done=done.append, base=False)
        self._note("done", layer)
        return self.sweeper.context, done

    def _note(self, event: str, layer) -> None:
        """A line of workers.log: which process works on which layer group (a worker on another node, where the
        run folder does not exist, writes nothing)."""
        import json
        import socket
        import time

        if not self.spec.log or not os.path.isdir(os.path.dirname(self.spec.log)):
            return
        line = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "layer": layer, "event": event,
                           "time": round(time.time(), 3)})
        with open(self.spec.log, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("the Ray backend needs Ray: pip install 'laserlm[ray]'") from None
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


def actor_count(ray, workers: int | None, gpus_per_worker: float, chunks_wanted: int) -> int:
    """Actors that can all run at once: never more than the cluster's GPUs allow, so none waits forever."""
    if workers is not None and workers < 1:
        raise UserError(f"a Ray sweep needs at least 1 worker, not {workers}")
    total = ray.cluster_resources()
    n = workers or max(1, int(ray.available_resources().get("CPU", 1)))
    if gpus_per_worker:
        gpus = total.get("GPU", 0)
        if gpus < gpus_per_worker:
            raise UserError(f"each Ray worker asks for {gpus_per_worker:g} GPU(s) but the Ray cluster has {gpus:g}: ask for "
                            "fewer (0 runs on CPUs), or join GPU nodes to the cluster")
        n = min(n, int(gpus // gpus_per_worker))
    return max(1, min(n, chunks_wanted))


def ray_sweep(spec: WorkerSpec, pending: list[Edit], store, n_layers: int, *, context: dict | None = None,
              workers: int | None = None, gpus_per_worker: float = 0.0, address: str | None = None,
              on_done=None) -> None:
    """Run single-edit candidates not yet in `store` on Ray actors; each finished row is stored at once.

    `context` is the driver's (model identity, task, rows, numerics): rows from a worker whose own context
    differs are refused with an error naming the difference, never stored.
    """
    ray = _import_ray()
    if not pending:
        return
    if not os.environ.get("RAY_ADDRESS", "x").strip():  # an empty RAY_ADDRESS means unset, not an address
        os.environ.pop("RAY_ADDRESS")
    address = address or os.environ.get("RAY_ADDRESS") or None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    actors = []
    try:
        by_layer: dict[int, list[Edit]] = {}
        for c in pending:
            by_layer.setdefault(c.layer, []).append(c)
        layers = sorted(by_layer)
        n = actor_count(ray, workers, gpus_per_worker, len(layers))
        # A candidate at layer l costs about n_layers - l blocks.
        chunks = contiguous_chunks(layers, {l: len(by_layer[l]) * (n_layers - l) for l in layers}, n)
        actor_cls = ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS)(SweepWorker)
        actors = [actor_cls.options(num_cpus=1, num_gpus=gpus_per_worker).remote(spec, 1) for _ in chunks]
        refs = {}
        for actor, chunk in zip(actors, chunks):
            for layer in chunk:  # an actor runs its calls in order: its prefix walk only goes up
                refs[actor.run.remote([c.to_json() for c in by_layer[layer]])] = layer
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            for ref in ready:
                theirs, rows = _result(ray, ref)
                if context is not None and theirs != context:
                    diff = "; ".join(f"{k}: {short(theirs.get(k))} on the worker, {short(context.get(k))} here"
                                     for k in sorted(set(theirs) | set(context)) if theirs.get(k) != context.get(k))
                    raise UserError(f"a Ray worker's results are not comparable with this run ({diff}): give every "
                                    "node the same model files, task data, device, dtype and SVD mode")
                for row in rows:
                    if row["key"] not in store:
                        store.append(row)
                        on_done and on_done(row)
                del refs[ref]
    finally:
        for actor in actors:
            ray.kill(actor)
        if started_here:
            ray.shutdown()


def _result(ray, ref):
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, UserError):
            raise UserError(f"on a Ray worker: {cause}") from None
        raise
    except ray.exceptions.RayActorError as e:
        reason = first_line(e)
        raise UserError(f"a Ray worker died {MAX_RESTARTS + 1} times ({reason}); if it ran out of memory, "
                        "use fewer workers, fewer tokens per batch, or bfloat16") from None
