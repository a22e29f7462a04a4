"""Edits as plain data, parsed from `[METHOD/]TYPE:LAYER:AMOUNT`, applied reversibly to a model."""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator, Union

import torch
from torch import nn

from .layout import Layout, Target, get_layout, is_matrix_module
from ..errors import UserError
from .methods import get_method, Reduced
from . import calibrated  # noqa: F401 - registers whiten/ and asvd/
from .ranks import rank_for
from .svd import SVDCache, default_cache

Amount = Union[float, str, None]  # rho, "k=K", or None for methods that take no amount


@dataclass(frozen=True)
class Edit:
    """One method applied to one matrix: hashable, printable, and saved as EDIT_OBJ JSON."""

    method: str
    type: str
    layer: int
    amount: Amount = None

    def __str__(self) -> str:
        prefix = "" if self.method == "svd" else f"{self.method}/"
        tail = "" if self.amount is None else f":{_fmt_amount(self.amount)}"
        return f"{prefix}{self.type}:{self.layer}{tail}"

    def to_json(self) -> dict:
        return {"method": self.method, "type": self.type, "layer": self.layer, "amount": self.amount}

    @classmethod
    def from_json(cls, obj: dict) -> "Edit":
        return cls(obj.get("method", "svd"), obj["type"], int(obj["layer"]), obj.get("amount"))


@dataclass(frozen=True)
class EditSpec:
    """A parsed EDIT before it meets a model: the type may be a group, the layers a range or `all`."""

    method: str
    type: str
    layers: tuple[int, ...] | None  # None means all layers
    amount: Amount

    def resolve(self, layout: Layout) -> list[Edit]:
        layers = range(layout.n_layers) if self.layers is None else self.layers
        return [Edit(self.method, t, i, self.amount) for i in layers for t in layout.expand_types(self.type)]


def _fmt_amount(amount: Amount) -> str:
    return amount if isinstance(amount, str) else format(amount, "g")


_EDIT_RE = re.compile(r"^(?:(?P<method>[\w.]+)/)?(?P<type>[\w.]+(?:@\w+)?):(?P<layers>[\d,\-]+|all)(?::(?P<amount>.+))?$")
EDIT_HELP = ("EDIT is [METHOD/]TYPE[@EXPERT]:LAYER:AMOUNT, e.g. mlp_in:27:0.01, mlp_out:20-27:k=8, zero/mlp_out:5, "
             "mlp_in@3:12:0.1 (expert 3 of a mixture)")


def parse_layers(text: str, edit: str) -> tuple[int, ...] | None:
    if text == "all":
        return None
    layers: list[int] = []
    for part in text.split(","):
        lo, dash, hi = part.partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise UserError(f"bad layer {text!r} in edit {edit!r}: use 7, 20-27, 3,5,9 or all")
        if dash and int(hi) < int(lo):
            raise UserError(f"bad layer range {part!r} in edit {edit!r}: write it low-high")
        layers.extend(range(int(lo), int(hi) + 1) if dash else [int(lo)])
    return tuple(layers)


def parse_amount(text: str | None, method: str, edit: str) -> Amount:
    kind = get_method(method).amount
    if kind == "none":
        return None
    if text is None:
        raise UserError(f"edit {edit!r} needs an amount: a fraction rho in (0, 1] or k=K")
    if m := re.fullmatch(r"k=(\d+)", text):
        if kind != "rank":
            raise UserError(f"method {method} takes a fraction rho in (0, 1], not {text!r}, in edit {edit!r}")
        if int(m.group(1)) < 1:
            raise UserError(f"rank {text!r} in edit {edit!r} must be at least 1")
        return f"k={int(m.group(1))}"
    try:
        rho = float(text)
    except ValueError:
        raise UserError(f"bad amount {text!r} in edit {edit!r}: use a fraction rho in (0, 1] or k=K") from None
    if not 0 < rho <= 1:
        raise UserError(f"amount {text!r} in edit {edit!r} is outside (0, 1]: rho is the fraction of rank kept")
    return rho


def parse_amounts(amounts, methods: list[str], where: str) -> list[Amount]:
    """A grid's amounts (texts or numbers), as the most permissive swept method reads them: a rank method
    also takes k=K; methods that take no amount give [None]."""
    kinds = {m: get_method(m).amount for m in methods}
    reader = next((m for m in methods if kinds[m] == "rank"), next((m for m in methods if kinds[m] != "none"), None))
    if reader is None:
        return [None]
    return [parse_amount(str(a).strip(), reader, where) for a in amounts]


def parse_edit(text: str) -> EditSpec:
    """Parse one EDIT string; raises UserError naming what is wrong."""
    m = _EDIT_RE.match(text.strip())
    if not m:
        raise UserError(f"malformed edit {text!r}: {EDIT_HELP}")
    method = m.group("method") or "svd"
    get_method(method)
    return EditSpec(method, m.group("type"), parse_layers(m.group("layers"), text),
                    parse_amount(m.group("amount"), method, text))


EditLike = Union[str, Edit, EditSpec, dict]


def resolve_edits(edits: Iterable[EditLike], layout: Layout) -> list[Edit]:
    """Strings, specs, JSON objects or Edits to concrete Edits for this model."""
    out: list[Edit] = []
    for e in edits:
        if isinstance(e, str):
            e = parse_edit(e)
        if isinstance(e, dict):
            e = Edit.from_json(e)
        out.extend(e.resolve(layout) if isinstance(e, EditSpec) else [e])
    return out


@dataclass(frozen=True)
class Step:
    """A validated edit bound to its module; `k` is the rank kept, for rank methods."""

    edit: Edit
    target: Target
    k: int | None

    def reduce(self, cache: SVDCache) -> Reduced:
        method = get_method(self.edit.method)
        weight = self.target.weight
        if method.clusters:  # groups of output features: the rows of out x in, the columns of an in x out matrix
            conv = self.target.transposed
            groups = cache.clusters(weight, method.clusters, self.edit.amount, transpose=conv)
            reduced = method.fn(weight.T if conv else weight, self.edit.amount, groups)
            reduced.transposed = conv
            return reduced
        if method.needs_stats:  # data-aware: the math is on out x in, whatever the storage
            from .calibrated import input_stats

            conv = self.target.transposed
            reduced = method.fn(weight.T if conv else weight, self.k, input_stats(self.target, self.edit), cache)
            return reduced.transpose() if conv else reduced
        arg = self.k if method.amount == "rank" else self.edit.amount
        # Only top-k methods may take a randomized SVD; the others read the whole spectrum.
        svd = cache.get(weight, self.k if method.top_only else None) if method.needs_svd else None
        return method.fn(weight, arg, svd)


def plan(model: nn.Module, edits: Iterable[EditLike], layout: Layout | None = None,
         cache: SVDCache | None = None) -> list[Step]:
    """Check every edit against the model before any weight is touched. `cache`'s mode decides the rank a top-k
    edit keeps (the authors' rule under --svd authors)."""
    layout = layout or get_layout(model)
    steps, seen = [], {}
    for edit in resolve_edits(edits, layout):
        for target in layout.target(edit.type, edit.layer).matrices():
            check_target(edit, target)
            if target.name in seen:
                raise UserError(f"edits {seen[target.name]} and {edit} both change {target.name}: keep one")
            seen[target.name] = edit
            method = get_method(edit.method)
            if method.amount != "rank":
                k = None
            elif method.top_only and cache is not None:
                k = cache.rank_for(edit.amount, target.shape)
            else:
                k = rank_for(edit.amount, target.shape)
            steps.append(Step(edit, target, k))
    return steps


def edits_of(steps: list[Step]) -> list[Edit]:
    """The distinct edits of a plan, in order: one edit of a mixture of experts is one step per expert matrix."""
    return list(dict.fromkeys(s.edit for s in steps))


def check_target(edit: Edit, target: Target) -> None:
    """Refuse, with the fix, a matrix that cannot be decomposed as it is stored."""
    from .quantized import refuse_quantized

    refuse_quantized(edit, target)
    if get_method(edit.method).needs_stats:
        from .calibrated import input_stats

        input_stats(target, edit)
    if target.index is None and not is_matrix_module(target.module):
        raise UserError(f"{edit} names {target.name}, which is not a Linear/Conv1D matrix")
    if target.weight.device.type == "meta":
        raise UserError(f"{edit} names {target.name}, which the device map offloads (its weight is on the meta "
                        "device): give the device map more GPU or CPU memory so the layers you edit stay resident")
    if getattr(target.module, "is_clustered", False):
        raise UserError(f"{edit} names {target.name}, stored as clustered factors: edit the dense model instead "
                        "(laser apply without --factorized)")


def low_rank_factors(step: Step, matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) of the same rank r as the factorized module of `step`, whose product is `matrix`.

    An edit of a matrix stored as rank-r factors must stay within rank r to be stored in them: `svd`,
    `bottom`, `mp` and `zero` do; a `prune` generally does not, and is refused.
    """
    module = step.target.module
    r = module.rank
    U, S, Vh = torch.linalg.svd(matrix.detach().float(), full_matrices=False)
    if len(S) > r and S[r] > 1e-4 * max(S[0].item(), 1e-30):
        raise UserError(f"{step.edit} on {step.target.name}, stored as rank-{r} factors, gives a matrix of rank "
                        f"above {r}: apply it to the dense model instead")
    root = S[:r].sqrt()
    return U[:, :r] * root, root[:, None] * Vh[:r]


def _rebind(param: torch.nn.Parameter, new: torch.Tensor, saved: list) -> None:
    saved.append((param, param.data))
    # Rebinding .data keeps the Parameter object (hooks, tying, optimizers see the same one)
    # and keeps the original tensor untouched, so restoring it is bit-exact and copy-free.
    param.data = new.to(dtype=param.dtype, device=param.device)


def write_matrix(target: Target, matrix: torch.Tensor, saved: list, copies: dict) -> None:
    """Put `matrix` (in the stored orientation) where `target` lives. One expert's slice of a 3-D parameter is
    written into a copy of that parameter, made once for all the experts an edit changes; the original stays
    untouched in `saved`, so restoring is still bit-exact."""
    param = target.stored
    if target.index is None:
        _rebind(param, matrix, saved)
        return
    data = copies.get(id(param))
    if data is None:
        saved.append((param, param.data))
        data = copies[id(param)] = param.data.clone()
        param.data = data
    data[target.index].copy_(matrix.to(dtype=data.dtype, device=data.device))


def _swap_in(steps: list[Step], cache: SVDCache, saved: list) -> None:
    copies: dict[int, torch.Tensor] = {}
    for step in steps:
        matrix = step.reduce(cache).matrix()
        module = step.target.module
        if getattr(module, "is_low_rank", False):  # its `weight` is a product: write the factors
            up, down = low_rank_factors(step, matrix)
            _rebind(module.up.weight, up, saved)
            _rebind(module.down.weight, down, saved)
        else:
            write_matrix(step.target, matrix, saved, copies)


@contextmanager
def edited(
    model: nn.Module,
    edits: Iterable[EditLike],
    *,
    layout: Layout | None = None,
    svd_cache: SVDCache | None = None,
) -> Iterator[list[Step]]:
    """Apply edits for the duration of a `with` block; every original weight comes back bit-exact.

    >>> with edited(model, ["mlp_in:27:0.01", "mlp_out:20-27:k=8"]) as steps:
    ...     logits = model(input_ids).logits
    """
    cache = svd_cache or default_cache()
    steps = plan(model, edits, layout, cache)
    saved: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    try:
        with torch.no_grad():
            _swap_in(steps, cache, saved)
        yield steps
    finally:
        for param, data in reversed(saved):
            param.data = data


def apply_edits(
    model: nn.Module,
    edits: Iterable[EditLike],
    *,
    layout: Layout | None = None,
    svd_cache: SVDCache | None = None,
) -> list[Step]:
    """Apply edits permanently (e.g. before saving); returns the validated steps."""
    cache = svd_cache or default_cache()
    steps = plan(model, edits, layout, cache)
    with torch.no_grad():
        _swap_in(steps, cache, [])
    return steps
