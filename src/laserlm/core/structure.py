"""Canonical matrix types found from a model's structure, for any decoder that has no table entry.

The block list is the ModuleList of the language model (the decoder a multimodal wrapper holds) whose length is
the text config's layer count. In each block, the attention module and the MLP are found by name and class (a
child called `*attn*`/`*attention*`, one called `mlp`/`feed_forward`/`ffn`/`*moe*`, or the block itself for MLPs
whose maps hang from it, as in OPT and BERT), and their matrices are named by role:
- MLP: the map that produces the hidden size is `mlp_out`; the maps that read it are `mlp_in` (the gate, or the
  only input map) and `mlp_up` (the second input of a gated MLP). A fused gate+up matrix (Phi-3's `gate_up_proj`,
  fused MoE experts) stays whole as `mlp_in`: how it splits (halves, or interleaved as in gpt-oss) is written in
  the model's code, not in its weights, and the whole matrix is what the model multiplies.
- Mixtures of experts: each expert's matrix (a Linear of an expert module, or one slice of a 3-D parameter) is a
  part of the layer's `mlp_*` target, shared experts included; the router is never a target.
- Attention: `attn_q`, `attn_k`, `attn_v`, a fused `attn_qkv`, and `attn_o`, by the names every family uses.
Matrices with no canonical role (MLA's low-rank q/kv maps, a state-space mixer's projections) keep their path in
the block as their type, so they can still be edited. Every role is checked against shapes: a map called `down` that
does not produce the hidden size is not `mlp_out`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from .targets import Conv1D, Target, is_matrix_module

_ATTN = re.compile(r"attn|attention|mixer|mamba", re.I)
_CROSS = re.compile(r"cross|encoder_attn", re.I)
_MLP = re.compile(r"mlp|feed_?forward|ffn|moe|experts?$|^ff$", re.I)
_RECURRENT = re.compile(r"mixer|mamba|linear_attn|ssm|rwkv|delta", re.I)
_ATTN_CLASS = re.compile(r"Attention|Attn|Mixer|Mamba", re.I)
_MLP_CLASS = re.compile(r"MLP|FeedForward|MoE|Moe|Expert|FFN|Sparse", re.I)
_ROUTER = re.compile(r"router|^gate$|^wg$|gating|shared_expert_gate|^switch", re.I)
_SHARED = re.compile(r"shared", re.I)
_OUT = re.compile(r"down|out|^w2$|fc2|c_proj|4h_to_h|^wo$|^o$|output", re.I)
_FUSED_IN = re.compile(r"gate_?up|w13|w_in$|in_proj$", re.I)
_GATE = re.compile(r"gate|^w1$|w_0$|fc1|c_fc|fc_in|h_to_4h|input|intermediate|^wi(_0)?$", re.I)
_UP = re.compile(r"up|^w3$|w_1$|^wi_1$", re.I)
_ATTN_NAMES = [
    ("attn_qkv", re.compile(r"^(qkv(_proj)?|query_key_value|c_attn|wqkv|qkv_lin|in_proj_qkv)$", re.I)),
    ("attn_q", re.compile(r"^(q|q_proj|query|wq|q_lin|q_linear)$", re.I)),
    ("attn_k", re.compile(r"^(k|k_proj|key|wk|k_lin|k_linear)$", re.I)),
    ("attn_v", re.compile(r"^(v|v_proj|value|wv|v_lin|v_linear)$", re.I)),
    ("attn_o", re.compile(r"^(o|o_proj|out_proj|dense|c_proj|wo|out_lin|attention_out|proj|output|out)$", re.I)),
]


@dataclass
class BlockLayout:
    """One block's targets by type, and the path of its attention module (relative to the block)."""

    targets: dict[str, Target] = field(default_factory=dict)
    attn: str | None = None
    notes: set[str] = field(default_factory=set)  # "moe", "fused gate+up", "state-space" ...


def text_config(model: nn.Module):
    config = getattr(model, "config", None)
    if config is None:
        return None
    getter = getattr(config, "get_text_config", None)
    return getter(decoder=True) if getter else config


def find_blocks(model: nn.Module) -> str | None:
    """The dotted path of the language model's block list: a ModuleList of the text config's layer count, inside
    the decoder (`get_decoder()`) when the model has one, the one holding the most parameters otherwise."""
    config = text_config(model)
    n = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    names = {id(m): name for name, m in model.named_modules()}
    roots = []
    get_decoder = getattr(model, "get_decoder", None)
    if get_decoder is not None:
        try:
            decoder = get_decoder()
        except (AttributeError, NotImplementedError, TypeError):
            decoder = None
        if isinstance(decoder, nn.Module) and id(decoder) in names:
            roots.append(decoder)
    roots.append(getattr(model, "base_model", model))
    roots.append(model)
    for root in roots:
        prefix = names.get(id(root), "")
        best, best_size = None, (False, -1)
        for rel, module in root.named_modules():
            if not isinstance(module, nn.ModuleList) or not len(module):
                continue
            full = f"{prefix}.{rel}".strip(".") if prefix else rel
            if re.search(r"vision|visual|image|audio|speech|encoder\.layers", full) and root is not model.base_model:
                continue
            # The config's layer count first (a decoder's own count may be named otherwise: the largest list then).
            size = (len(module) == n, sum(p.numel() for p in module.parameters()))
            if size > best_size:
                best, best_size = full, size
        if best is not None:
            return best
    return None


def hidden_size(model: nn.Module) -> int | None:
    config = text_config(model)
    for name in ("hidden_size", "n_embd", "d_model", "dim"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return getattr(emb, "embedding_dim", None)


def expert_counts(model: nn.Module) -> set[int]:
    config = text_config(model)
    names = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts", "num_routed_experts")
    return {v for k in names if isinstance(v := getattr(config, k, None), int)}


@dataclass
class _Matrix:
    rel: str  # path in the block (the module, or module + "." + parameter for a 3-D parameter)
    module: nn.Module
    param: str
    shape: tuple[int, ...]  # the stored shape
    expert_list: int | None = None  # index in a ModuleList of experts
    transposed: bool = False  # a 3-D parameter stored (experts, in, out), for a matmul
    tag: str | None = None  # the expert it belongs to: an index, or "shared"
    expert: bool = False  # part of a mixture of experts (its target has one part per expert matrix)

    @property
    def leaf(self) -> str:
        parts = self.rel.split(".")
        return parts[-1] if not parts[-1].isdigit() else parts[-2]


def _matrices(container: nn.Module, base: str, skip: set[int]) -> list[_Matrix]:
    """Matrix leaves and 3-D expert parameters under `container`, paths relative to the block."""
    found = []
    for rel, module in container.named_modules():
        if id(module) in skip:
            continue
        path = f"{base}.{rel}".strip(".") if rel else base
        if _is_linear_like(module):
            w = getattr(module, "weight", None)
            shape = tuple(w.shape) if isinstance(w, torch.Tensor) and w.dim() == 2 else \
                (getattr(module, "out_features", 0), getattr(module, "in_features", 0))
            if isinstance(module, Conv1D):
                shape = (shape[1], shape[0])
            found.append(_Matrix(path, module, "weight", shape))
            continue
        for pname, p in module.named_parameters(recurse=False):
            if p.dim() == 3 and p.shape[0] > 1 and min(p.shape[1:]) > 1:  # experts x out x in, not a (1, 1, d) mix
                found.append(_Matrix(f"{path}.{pname}".strip("."), module, pname, tuple(p.shape)))
    return found


def _is_linear_like(module: nn.Module) -> bool:
    """A Linear, a Conv1D, or a quantized linear (bitsandbytes, GPTQ, FP8...): in/out features and no children."""
    if is_matrix_module(module):
        return True
    return (isinstance(getattr(module, "in_features", None), int) and isinstance(getattr(module, "out_features", None), int)
            and not any(True for _ in module.children()))


def _holds_matrices(module: nn.Module) -> bool:
    return any(_is_linear_like(m) or any(p.dim() == 3 for p in m.parameters(recurse=False)) for m in module.modules())


def _pick(children: list, by_class: re.Pattern, by_name: re.Pattern, exclude: re.Pattern | None = None) -> str | None:
    """The first child whose class, else whose name, says it is the module sought."""
    ok = [(n, m) for n, m in children if not (exclude and exclude.search(n))]
    for n, m in ok:
        if by_class.search(type(m).__name__):
            return n
    return next((n for n, m in ok if by_name.search(n)), None)


def _skipped(drop: list[nn.Module | None]) -> set[int]:
    """Every module under these (the attention, a cross-attention): not the MLP's."""
    return {id(x) for m in drop if m is not None for x in m.modules()}


def analyze_block(model: nn.Module, block: nn.Module, layer: int, block_path: str,
                  hidden: int | None = None, experts: set[int] | None = None) -> BlockLayout:
    """Block `layer`'s targets by role, its attention's path, and what was noted on the way. `hidden` and `experts`
    (the hidden size and expert counts, from the model when not given) are the model's, the same for every block."""
    hidden = hidden if hidden is not None else hidden_size(model)
    experts = experts if experts is not None else expert_counts(model)
    out = BlockLayout()
    children = [(n, m) for n, m in block.named_children() if _holds_matrices(m)]
    attn_name = _pick(children, _ATTN_CLASS, _ATTN, exclude=_CROSS)
    mlp_name = _pick([(n, m) for n, m in children if n != attn_name], _MLP_CLASS, _MLP)
    if attn_name is not None and mlp_name is None and _MLP_CLASS.search(type(getattr(block, attn_name)).__name__):
        attn_name, mlp_name = None, attn_name  # a hybrid's `mixer` that is an MLP in this block (Nemotron-H)
    attn = getattr(block, attn_name) if attn_name else None
    cross = [m for n, m in children if _CROSS.search(n)]
    out.attn = attn_name
    if mlp_name is not None:
        mlp_matrices = _matrices(getattr(block, mlp_name), mlp_name, set())
        for n, m in children:  # a shared expert beside the routed ones (Granite-MoE-Hybrid's shared_mlp)
            if n not in (mlp_name, attn_name) and _SHARED.search(n) and _MLP.search(n):
                mlp_matrices += _matrices(m, n, set())
    else:  # the MLP's maps hang from the block (OPT's fc1/fc2, BERT's intermediate/output)
        mlp_matrices = _matrices(block, "", _skipped([attn, *cross]))
    mlp_types = _mlp_roles(mlp_matrices, hidden, experts, out.notes)
    attn_matrices = _matrices(attn, attn_name, set()) if attn is not None else []
    attn_types = _attn_roles(attn_matrices, hidden)
    for role, parts in list(mlp_types.items()) + list(attn_types.items()):
        out.targets[role] = _target(role, layer, block_path, parts)
    # Everything else keeps its path as its type: still editable by name (routers excepted).
    assigned = {(id(m.module), m.param) for parts in [*mlp_types.values(), *attn_types.values()] for m in parts}
    for m in _matrices(block, "", set()):
        if (id(m.module), m.param) in assigned or len(m.shape) != 2 or min(m.shape) < 2:
            continue
        if any(_ROUTER.search(seg) for seg in m.rel.split(".")) or m.shape[0] in experts:
            continue
        out.targets.setdefault(m.rel, _target(m.rel, layer, block_path, [m]))
    if attn is not None and _ATTN.search(attn_name) and _RECURRENT.search(attn_name + type(attn).__name__):
        out.notes.add("state-space or linear attention")
    return out


def _target(role: str, layer: int, block_path: str, parts: list[_Matrix]) -> Target:
    subs = [t for m in parts for t in _split(m, role, layer, block_path)]
    if len(subs) == 1 and not parts[0].expert:
        return subs[0]
    name = f"{block_path}.{layer}.{_common(parts)}"
    return Target(role, layer, name, subs[0].module, parts=tuple(subs))


def _common(parts: list[_Matrix]) -> str:
    paths = [m.rel.split(".") for m in parts]
    common = []
    for seg in zip(*paths):
        if len(set(seg)) != 1:
            break
        common.append(seg[0])
    return ".".join(common) or paths[0][0]


def _split(m: _Matrix, role: str, layer: int, block_path: str) -> list[Target]:
    """One Target per 2-D matrix: a Linear whole, a 3-D parameter one expert at a time."""
    base = f"{block_path}.{layer}.{m.rel}"
    if len(m.shape) == 2:
        return [Target(role, layer, base, m.module, expert=m.tag,
                       transposed=isinstance(m.module, Conv1D))]
    return [Target(role, layer, f"{base}[{e}]", m.module, param=m.param, index=e, transposed=m.transposed,
                   expert=str(e)) for e in range(m.shape[0])]


def _orient(m: _Matrix, role: str, hidden: int | None) -> bool:
    """Whether a matrix fits its role: `mlp_out` produces the hidden size, the inputs read it. A 3-D expert
    parameter is stored (experts, out, in) for F.linear or (experts, in, out) for a matmul: the role says which."""
    out_dim, in_dim = m.shape[-2], m.shape[-1]
    if hidden is None:
        return True
    if len(m.shape) == 2:
        return out_dim == hidden if role == "mlp_out" else in_dim == hidden
    if role == "mlp_out":
        if out_dim == hidden:
            return True
        m.transposed = in_dim == hidden
        return m.transposed
    if in_dim == hidden:
        return True
    m.transposed = out_dim == hidden
    return m.transposed


def _mlp_roles(matrices: list[_Matrix], hidden: int | None, experts: set[int], notes: set[str]) -> dict:
    roles: dict[str, list[_Matrix]] = {}
    candidates = []
    for m in matrices:
        if _ROUTER.search(m.leaf) or (len(m.shape) == 2 and m.shape[0] in experts | {1} and m.shape[0] != hidden):
            continue
        segs = m.rel.split(".")
        digit = next((int(s) for s in segs if s.isdigit()), None)
        if digit is not None and any("expert" in s for s in segs):
            m.expert_list = digit
        candidates.append(m)
    for m in candidates:
        leaf = m.leaf if m.param == "weight" or len(m.shape) == 2 else m.param
        if m.param == "weight" and len(m.shape) == 3:
            leaf = m.rel.split(".")[-2]
        if _OUT.search(leaf) and not _FUSED_IN.search(leaf):
            role = "mlp_out"
        elif _FUSED_IN.search(leaf):
            role = "mlp_in"
            notes.add("fused gate+up")
        elif _GATE.search(leaf) and not (_UP.search(leaf) and "gate" not in leaf.lower()):
            role = "mlp_in"
        elif _UP.search(leaf):
            role = "mlp_up"
        else:  # no telling name: by shape
            role = "mlp_out" if m.shape[-2] == hidden and m.shape[-1] != hidden else \
                "mlp_in" if m.shape[-1] == hidden else None
        if role is None or not _orient(m, role, hidden):
            continue
        if _SHARED.search(m.rel):
            m.tag = "shared"
        elif m.expert_list is not None:
            m.tag = str(m.expert_list)
        if len(m.shape) == 3 or m.expert_list is not None:
            notes.add("moe")
        m.expert = len(m.shape) == 3 or m.expert_list is not None or _SHARED.search(m.rel) is not None
        roles.setdefault(role, []).append(m)
    for role, parts in roles.items():  # outside a mixture, one matrix per role: the first the names chose
        if not any(m.expert for m in parts):
            roles[role] = parts[:1]
    # A lone input map of an ungated MLP named `up` (Apertus, Jais-2) is its input: mlp_in.
    if "mlp_up" in roles and "mlp_in" not in roles:
        roles["mlp_in"] = roles.pop("mlp_up")
    if any(m.expert for parts in roles.values() for m in parts):
        for parts in roles.values():
            for m in parts:
                m.expert = True
    return roles


def _attn_roles(matrices: list[_Matrix], hidden: int | None) -> dict:
    roles: dict[str, list[_Matrix]] = {}
    for m in matrices:
        if len(m.shape) != 2:
            continue
        leaf = m.leaf if m.leaf != "linear" else m.rel.split(".")[-2]  # Moshi wraps each map: q_proj.linear
        for role, pattern in _ATTN_NAMES:
            if pattern.match(leaf) and role not in roles:
                if role == "attn_o" and hidden is not None and m.shape[0] != hidden:
                    continue
                if role != "attn_o" and hidden is not None and m.shape[1] != hidden:
                    continue
                roles[role] = [m]
                break
    return roles
