"""A tokenizer.json written as GGUF tokenizer metadata, the way llama.cpp reads it back.

llama.cpp does not run the tokenizer.json: it reimplements a fixed set of pre-tokenizers, chosen by the name in
`tokenizer.ggml.pre`. llama.cpp's converter picks that name by hashing the tokens of a test string; here it is
picked by the pre-tokenizer's own definition (its split regexes and byte-level step), which says the same thing
without a table of hashes per model and holds for any vocabulary built on a known pre-tokenizer. A definition
that matches none of the known ones is refused: written with a wrong name, the file would load and tokenize
wrongly without a word.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import UserError

# The split regexes of the byte-level BPE pre-tokenizers llama.cpp implements, as tokenizer.json spells them.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {
    (("bytelevel", True),): "gpt-2",
    (("digits", True), ("bytelevel", True)): "smollm",
    (("split", LLAMA3_SPLIT), ("bytelevel", False)): "llama-bpe",
    (("split", QWEN2_SPLIT), ("bytelevel", False)): "qwen2",
}


def _steps(pre: dict | None) -> tuple:
    """The pre-tokenizer as a tuple of comparable steps; a step of a kind llama.cpp has no match for gives None."""
    if pre is None:
        return ()
    if pre.get("type") == "Sequence":
        return tuple(s for p in pre.get("pretokenizers", []) for s in _steps(p))
    kind = pre.get("type")
    if kind == "ByteLevel" and not pre.get("add_prefix_space", False):
        return (("bytelevel", bool(pre.get("use_regex", True))),)
    if kind == "Digits":
        return (("digits", bool(pre.get("individual_digits", False))),)
    if kind == "Split" and pre.get("behavior") == "Isolated" and not pre.get("invert", False):
        return (("split", (pre.get("pattern") or {}).get("Regex")),)
    return ((kind, json.dumps(pre, sort_keys=True)),)


def pre_tokenizer_name(tokenizer_json: dict) -> str:
    """llama.cpp's name for the byte-level BPE pre-tokenizer of `tokenizer_json`, or a one-line refusal."""
    normalizer = tokenizer_json.get("normalizer")
    if normalizer is not None and normalizer.get("type") != "NFC":
        raise UserError(f"GGUF out: the tokenizer's normalizer ({normalizer.get('type')}) has no llama.cpp "
                        "counterpart: written, the file would tokenize differently from the folder")
    steps = _steps(tokenizer_json.get("pre_tokenizer"))
    name = PRE_TOKENIZERS.get(steps)
    if name is None:
        shown = ", ".join(s[0] for s in steps) or "none"
        raise UserError(f"GGUF out: the tokenizer's pre-tokenizer ({shown}) is none of those laserlm maps to "
                        f"llama.cpp's ({', '.join(sorted(PRE_TOKENIZERS.values()))}): not written, as llama.cpp "
                        "would split text differently; convert the folder with llama.cpp's convert_hf_to_gguf.py")
    return name


def _added(tokenizer_json: dict) -> dict[int, dict]:
    return {int(a["id"]): a for a in tokenizer_json.get("added_tokens") or []}


def _bpe_tokens(tokenizer_json: dict, n_vocab: int, types) -> tuple[list[str], list[float], list[int]]:
    """Byte-level BPE: the vocabulary by id, added tokens typed control (special) or user-defined, and the rows
    the embedding has beyond the tokenizer padded as unused, as llama.cpp's converter does."""
    by_id = {int(i): t for t, i in tokenizer_json["model"]["vocab"].items()}
    added = _added(tokenizer_json)
    tokens, kinds = [], []
    for i in range(n_vocab):
        if i in added:
            tokens.append(added[i]["content"])
            kinds.append(types.CONTROL if added[i].get("special") else types.USER_DEFINED)
        elif i in by_id:
            tokens.append(by_id[i])
            kinds.append(types.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            kinds.append(types.UNUSED)
    return tokens, [0.0] * n_vocab, kinds


def _space_prefix(tokenizer_json: dict) -> bool:
    text = json.dumps([tokenizer_json.get("normalizer"), tokenizer_json.get("pre_tokenizer")])
    return '"Prepend"' in text or bool(re.search(r'"prepend_scheme": "(first|always)"', text))


def _spm_tokens(tokenizer_json: dict, n_vocab: int, types) -> tuple[list[str], list[float], list[int]]:
    """SentencePiece BPE (Llama-2, Mistral): llama.cpp merges the pair whose result scores highest. The converted
    vocabulary lists pieces in SentencePiece's merge order, so -id orders the merges as the folder's tokenizer
    does; byte pieces, the unknown piece and specials get their own types."""
    model = tokenizer_json["model"]
    by_id = {int(i): t for t, i in model["vocab"].items()}
    added, unk = _added(tokenizer_json), model.get("unk_token")
    tokens, scores, kinds = [], [], []
    for i in range(n_vocab):
        text = added[i]["content"] if i in added else by_id.get(i, f"[PAD{i}]")
        tokens.append(text)
        scores.append(0.0 if i in added or re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text) else -float(i))
        if text == unk:
            kinds.append(types.UNKNOWN)
        elif i in added:
            kinds.append(types.CONTROL if added[i].get("special") else types.USER_DEFINED)
        elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text):
            kinds.append(types.BYTE)
        else:
            kinds.append(types.NORMAL if i in by_id else types.UNUSED)
    return tokens, scores, kinds


def add_tokenizer(writer, folder: Path, n_vocab: int) -> str:
    """Write the tokenizer saved in `folder` into `writer`; returns what was written ("gpt2/qwen2", "llama")."""
    import gguf

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise UserError("GGUF out: the model's tokenizer saves no tokenizer.json, which GGUF out reads")
    tj = json.loads(path.read_text(encoding="utf-8"))
    model = tj.get("model") or {}
    ids = [int(i) for i in (model.get("vocab") or {}).values()] + list(_added(tj))
    if ids and max(ids) >= n_vocab:
        raise UserError(f"GGUF out: the tokenizer has token id {max(ids)}, past the model's {n_vocab} embedding rows")
    decoder = (tj.get("decoder") or {}).get("type")
    if model.get("type") == "BPE" and not model.get("byte_fallback") and decoder == "ByteLevel":
        pre = pre_tokenizer_name(tj)
        tokens, scores, kinds = _bpe_tokens(tj, n_vocab, gguf.TokenType)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        what, merges = f"gpt2/{pre}", True
    elif model.get("type") == "BPE" and model.get("byte_fallback"):
        tokens, scores, kinds = _spm_tokens(tj, n_vocab, gguf.TokenType)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_add_space_prefix(_space_prefix(tj))
        what, merges = "llama (SentencePiece BPE)", False
    else:
        raise UserError(f"GGUF out: a {model.get('type')} tokenizer (decoder {decoder}) is not one laserlm "
                        "writes (byte-level BPE, or SentencePiece BPE with byte fallback)")
    if len(tokens) != n_vocab:  # pragma: no cover - built to length
        raise AssertionError("token list length")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(kinds)
    gguf.SpecialVocab(folder, load_merges=merges, n_vocab=n_vocab).add_to_gguf(writer, quiet=True)
    return what
