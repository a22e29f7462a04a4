"""The SVD engine: one exact decomposition per matrix, cached in memory and on disk, sliced for any k.

The disk cache is keyed by a content hash of the weight, so a second run of the same model (or the
same matrix in another process, e.g. a search worker) skips the decomposition. Decompositions are
always computed in float32 or better, whatever the model's dtype.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils.weak import WeakIdKeyDictionary

from ..errors import UserError

RANDOMIZED_OVERSAMPLE = 10
RANDOMIZED_NITER = 4
AUTHORS_NITER = 2  # src/laser/matrix_utils.py:39-50 of pratyushasharma/laser: svd_lowrank(W, q=k, niter=2)
MODES = ("exact", "randomized", "authors")


def cache_root() -> Path:
    """`$LASERLM_CACHE` if set, else ~/.cache/laserlm."""
    return Path(os.environ.get("LASERLM_CACHE") or Path.home() / ".cache" / "laserlm")


def weight_key(weight: torch.Tensor) -> str:
    """A content hash of a tensor: bytes, shape and dtype."""
    t = weight.detach().contiguous()
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{tuple(t.shape)}|{t.dtype}".encode())
    h.update(t.cpu().view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()


class _KeyMemo:
    """Each tensor is hashed once per version: a sweep asks for the same weight once per candidate.

    A memo entry holds a weak reference to the tensor's storage (so its address cannot be reused while
    the entry lives) and the tensor's version counter, which every in-place write through autograd's
    view bumps. Rebinding `param.data` changes the storage, so it is seen too. (A write through
    `param.data` itself bypasses the version counter; laserlm never does that.)
    """

    def __init__(self):
        self._memo = WeakIdKeyDictionary()
        self.hashed = 0

    def __call__(self, weight: torch.Tensor) -> str:
        storage = weight.untyped_storage()
        stamp = (storage._cdata, weight.storage_offset(), tuple(weight.shape), tuple(weight.stride()),
                 weight.dtype, weight._version)
        entry = self._memo.get(weight)
        if entry is not None and not entry[0].expired() and entry[1] == stamp:
            return entry[2]
        key = weight_key(weight)
        self.hashed += 1
        self._memo[weight] = (StorageWeakRef(storage), stamp, key)
        return key


@dataclass
class SVD:
    """W = U diag(S) Vh, float32, singular values in descending order."""

    U: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.U, self.S, self.Vh))

    def to(self, device) -> "SVD":
        return SVD(self.U.to(device), self.S.to(device), self.Vh.to(device))


@dataclass
class Clusters:
    """A matrix's rows in groups (core/clusters.py) and the top-k of each group's exact SVD."""

    labels: torch.Tensor  # (rows,): the group of each row
    svds: list[SVD]

    @property
    def groups(self) -> list[torch.Tensor]:
        return [(self.labels == j).nonzero().flatten() for j in range(len(self.svds))]

    @property
    def nbytes(self) -> int:
        return self.labels.numel() * 8 + sum(s.nbytes for s in self.svds)

    def to(self, device) -> "Clusters":
        return Clusters(self.labels.to(device), [s.to(device) for s in self.svds])


def _compute_dtype(weight: torch.Tensor) -> torch.dtype:
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


class SVDCache:
    """Exact (or opt-in randomized) SVDs of weight matrices, keyed by content.

    `disk=None` keeps the cache in memory only. `max_bytes` bounds the in-memory LRU, which lives on the
    CPU whatever the weights' device: only the decomposition in use is kept on the accelerator.
    `disk_max_bytes` bounds the disk cache (least recently used entries go first); by default
    `$LASERLM_SVD_CACHE_GB`, else 20 GiB or half the free disk (`default_disk_bound`).
    """

    def __init__(self, disk: Path | str | None = "default", mode: str = "exact", max_bytes: int = 4 << 30,
                 disk_max_bytes: int | None = None, seed: int = 0):
        if mode not in MODES:
            raise ValueError(f"unknown SVD mode {mode!r}")
        self.mode, self.seed = mode, seed
        self.disk = cache_root() / "svd" if disk == "default" else (Path(disk) if disk else None)
        self.max_bytes = max_bytes
        self.disk_max_bytes = disk_max_bytes if disk_max_bytes is not None else (_env_disk_bound()
                                                                               or default_disk_bound(self.disk))
        self._memory: OrderedDict[tuple, SVD] = OrderedDict()
        self._bytes = 0
        self._hot: tuple[tuple, torch.device, SVD] | None = None  # the last decomposition, on its device
        self.key_of = _KeyMemo()
        self.computed = 0  # decompositions actually computed, for tests and benchmarks
        self.disk_hits = 0

    @property
    def label(self) -> str:
        """The mode as run folders record it (a result key depends on it): exact, randomized(seed=S), authors(seed=S)."""
        return self.mode if self.mode == "exact" else f"{self.mode}(seed={self.seed})"

    def rank_for(self, amount, shape) -> int:
        """The rank a top-k edit keeps: ours (core.methods.rank_for), or under `authors` the authors' rule."""
        from .ranks import authors_rank, rank_for

        return authors_rank(amount, shape) if self.mode == "authors" else rank_for(amount, shape)

    def get(self, weight: torch.Tensor, k: int | None = None) -> SVD:
        """The SVD of `weight`, on its device.

        With `k=None` the decomposition is always exact and complete (spectra, `bottom`, `mp`). In
        randomized mode a given `k` asks only for the top k components, computed by `svd_lowrank`; in authors
        mode by the authors' own call, `svd_lowrank(W, q=k, niter=2)` in float32, seeded with `seed`.
        """
        key = self.key_of(weight)
        randomized = self.mode != "exact" and k is not None
        mem_key = (key, k, self.mode, self.seed) if randomized else (key, None)
        if self._hot is not None and self._hot[0] == mem_key and self._hot[1] == weight.device:
            return self._hot[2]
        svd = self._memory.get(mem_key)
        if svd is None:
            svd = None if randomized else self._load(key)
            if svd is None:
                svd = self._compute(weight, k if randomized else None)
                if not randomized:
                    self._store(key, svd)
            svd = svd.to("cpu")
            self._remember(mem_key, svd)
        else:
            self._memory.move_to_end(mem_key)
        on_device = svd.to(weight.device)
        self._hot = (mem_key, weight.device, on_device)
        return on_device

    def clusters(self, weight: torch.Tensor, c: int, amount, transpose: bool = False) -> Clusters:
        """The rows of `weight` (of its transpose: the output features of a Conv1D) in `c` groups for `amount`,
        each with the top-k of its exact SVD, on the weight's device; cached in memory and on disk like the SVDs."""
        from .clusters import cluster_rows, group_rank

        key = f"{self.key_of(weight)}-c{c}{'t' if transpose else ''}-{amount}"
        mem_key = (key, "clusters")
        found = self._memory.get(mem_key)
        if found is None:
            found = self._load_clusters(key)
            if found is None:
                rows = weight.detach().to(_compute_dtype(weight))
                rows = rows.T if transpose else rows
                labels = cluster_rows(rows, c, amount)
                svds = []
                for j in range(int(labels.max()) + 1 if len(labels) else 0):
                    self.computed += 1
                    U, S, Vh = torch.linalg.svd(rows[labels == j], full_matrices=False)
                    k = group_rank(amount, int((labels == j).sum()), rows.shape[1])
                    svds.append(SVD(U[:, :k].contiguous(), S[:k].contiguous(), Vh[:k].contiguous()))
                found = Clusters(labels, svds).to("cpu")
                self._store_tensors(key, {"labels": found.labels, **{f"{n}{j}": getattr(s, n) for j, s in
                                                                     enumerate(found.svds) for n in ("U", "S", "Vh")}})
            self._remember(mem_key, found)
        else:
            self._memory.move_to_end(mem_key)
        return found.to(weight.device)

    def _load_clusters(self, key: str) -> Clusters | None:
        t = self._load_tensors(key)
        if t is None:
            return None
        n = sum(1 for name in t if name.startswith("S"))
        return Clusters(t["labels"], [SVD(t[f"U{j}"], t[f"S{j}"], t[f"Vh{j}"]) for j in range(n)])

    def _compute(self, weight: torch.Tensor, k: int | None) -> SVD:
        self.computed += 1
        if k is not None and self.mode == "authors":
            U, S, V = authors_svd(weight, k, self.seed)
            return SVD(U.contiguous(), S.contiguous(), V.mT.contiguous())
        w = weight.detach().to(_compute_dtype(weight))
        if k is None:
            U, S, Vh = torch.linalg.svd(w, full_matrices=False)
        else:
            q = min(min(w.shape), (k or 1) + RANDOMIZED_OVERSAMPLE)
            with seeded(w.device, self.seed):
                U, S, V = torch.svd_lowrank(w, q=q, niter=RANDOMIZED_NITER)
            Vh = V.mT
        return SVD(U.contiguous(), S.contiguous(), Vh.contiguous())

    def _remember(self, key: tuple, svd: SVD) -> None:
        self._memory[key] = svd
        self._bytes += svd.nbytes
        while self._bytes > self.max_bytes and len(self._memory) > 1:
            _, old = self._memory.popitem(last=False)
            self._bytes -= old.nbytes

    def _path(self, key: str) -> Path:
        return self.disk / key[:2] / f"{key}.safetensors"

    def _load(self, key: str) -> SVD | None:
        t = self._load_tensors(key)
        return None if t is None else SVD(t["U"], t["S"], t["Vh"])

    def _load_tensors(self, key: str) -> dict | None:
        if self.disk is None or not self._path(key).exists():
            return None
        try:
            t = load_file(self._path(key))
            os.utime(self._path(key))  # the disk bound evicts by last use
        except Exception:  # a corrupt entry is recomputed, never fatal
            return None
        self.disk_hits += 1
        return t

    def _evict(self, keep: Path) -> None:
        """Delete least recently used entries until the disk cache fits its bound (never `keep`)."""
        if self.disk_max_bytes is None:
            return
        entries = []
        for p in self.disk.glob("*/*.safetensors"):
            try:
                st = p.stat()
            except OSError:  # removed by another process meanwhile
                continue
            entries.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in entries)
        for _, size, p in sorted(entries, key=lambda e: e[0]):
            if total <= self.disk_max_bytes:
                break
            if p != keep:
                p.unlink(missing_ok=True)
                total -= size

    def _store(self, key: str, svd: SVD) -> None:
        cpu = svd.to("cpu")
        self._store_tensors(key, {"U": cpu.U, "S": cpu.S, "Vh": cpu.Vh})

    def _store_tensors(self, key: str, tensors: dict) -> None:
        if self.disk is None:
            return
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write then rename, so a concurrent reader never sees half a file.
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            os.close(fd)
            save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
            os.replace(tmp, path)
            self._evict(keep=path)
        except OSError:
            pass  # a read-only or full cache folder only costs speed


def authors_svd(weight: torch.Tensor, k: int, seed: int):
    """The authors' call, `torch.svd_lowrank(W.float(), q=k, niter=2)` (src/laser/matrix_utils.py:39-50), with the
    random generators seeded by `seed` for this call alone (their code seeds nothing); returns (U, S, V)."""
    w = weight.detach().to(torch.float32)
    with seeded(w.device, seed):
        return torch.svd_lowrank(w, q=k, niter=AUTHORS_NITER)


@contextmanager
def seeded(device: torch.device, seed: int):
    """torch's generators (the CPU's, and `device`'s if it is a GPU) seeded for the block, then put back."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


DISK_DEFAULT = 20 << 30


def default_disk_bound(folder: Path | None) -> int | None:
    """20 GiB, or half the free disk where less is free. 20 GiB holds the exact SVDs of every matrix the paper's
    grid reduces in a 7B model (mlp_in and mlp_out of Llama-2-7B's 32 layers: 64 x 247 MB = 15.8 GB), so a
    search of such a model never recomputes one; evicting the least recently used keeps a machine that searches
    many models from filling its disk."""
    if folder is None:
        return None
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        import shutil

        free = shutil.disk_usage(probe).free
    except OSError:
        return DISK_DEFAULT
    return min(DISK_DEFAULT, free // 2)


def _env_disk_bound() -> int | None:
    text = os.environ.get("LASERLM_SVD_CACHE_GB")
    if not text:
        return None
    try:
        gb = float(text)
    except ValueError:
        gb = -1.0
    if gb <= 0:
        raise UserError(f"LASERLM_SVD_CACHE_GB={text!r} is not a positive number of GB: unset it or give e.g. 50")
    return int(gb * (1 << 30))


_default: SVDCache | None = None


def default_cache() -> SVDCache:
    """The process-wide cache; `$LASERLM_SVD_DISK=0` keeps it in memory only."""
    global _default
    if _default is None:
        disk = None if os.environ.get("LASERLM_SVD_DISK", "1") == "0" else "default"
        _default = SVDCache(disk=disk)
    return _default


def set_default_cache(cache: SVDCache) -> None:
    global _default
    _default = cache
