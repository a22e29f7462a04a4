"""The architecture table: canonical matrix types to module paths, one entry per `model_type`.

Any causal LM is found by its structure (core/structure.py); the table keeps the paper's families with their
exact module choices, the encoders and non-language models, and is where a correction goes when structure cannot
decide (an entry here wins).
Paths are relative to one block; `blocks` is the block list relative to `model.base_model`.
`head` is the model class used to load it: causal LMs by default, masked LMs for encoders ("mlm"), the class
the folder's config names for other models ("image", "none"). An entry may be a list of alternatives (one
per naming of the modules across transformers releases): the first whose blocks exist is used.
`attn` is a block's attention module. In every entry its input does not depend on the block's MLP (the MLP
comes after it, or beside it in GPT-J/GPT-NeoX's parallel blocks), so an MLP edit at layer l leaves the
attention output of block l unchanged and the search replays it instead of recomputing it.
"""

_LLAMA_LIKE = {
    "blocks": "layers",
    "attn": "self_attn",
    "types": {
        "mlp_in": "mlp.gate_proj",
        "mlp_up": "mlp.up_proj",
        "mlp_out": "mlp.down_proj",
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_o": "self_attn.o_proj",
    },
}

_BERT_LIKE = {
    "blocks": "encoder.layer",
    "attn": "attention",
    "head": "mlm",
    "types": {
        "mlp_in": "intermediate.dense",
        "mlp_out": "output.dense",
        "attn_q": "attention.self.query",
        "attn_k": "attention.self.key",
        "attn_v": "attention.self.value",
        "attn_o": "attention.output.dense",
    },
}

ARCHITECTURES: dict[str, dict] = {
    **{name: _LLAMA_LIKE for name in ("llama", "mistral", "qwen2", "gemma", "gemma2", "gemma3_text")},
    # Phi-3 fuses gate+up and q,k,v into single matrices; they are addressed whole.
    "phi3": {
        "blocks": "layers",
        "attn": "self_attn",
        "types": {
            "mlp_in": "mlp.gate_up_proj",
            "mlp_out": "mlp.down_proj",
            "attn_qkv": "self_attn.qkv_proj",
            "attn_o": "self_attn.o_proj",
        },
    },
    # GPT-2 uses Conv1D (weights stored in x out); q,k,v are one fused c_attn matrix.
    "gpt2": {
        "blocks": "h",
        "attn": "attn",
        "types": {
            "mlp_in": "mlp.c_fc",
            "mlp_out": "mlp.c_proj",
            "attn_qkv": "attn.c_attn",
            "attn_o": "attn.c_proj",
        },
    },
    "gptj": {
        "blocks": "h",
        "attn": "attn",
        "types": {
            "mlp_in": "mlp.fc_in",
            "mlp_out": "mlp.fc_out",
            "attn_q": "attn.q_proj",
            "attn_k": "attn.k_proj",
            "attn_v": "attn.v_proj",
            "attn_o": "attn.out_proj",
        },
    },
    "gpt_neox": {
        "blocks": "layers",
        "attn": "attention",
        "types": {
            "mlp_in": "mlp.dense_h_to_4h",
            "mlp_out": "mlp.dense_4h_to_h",
            "attn_qkv": "attention.query_key_value",
            "attn_o": "attention.dense",
        },
    },
    "opt": {
        "blocks": "decoder.layers",
        "attn": "self_attn",
        "types": {
            "mlp_in": "fc1",
            "mlp_out": "fc2",
            "attn_q": "self_attn.q_proj",
            "attn_k": "self_attn.k_proj",
            "attn_v": "self_attn.v_proj",
            "attn_o": "self_attn.out_proj",
        },
    },
    "roberta": _BERT_LIKE,
    "bert": _BERT_LIKE,
    # ViTForImageClassification: transformers 5.x names the blocks vit.layers with q/k/v/o and fc1/fc2;
    # older releases used BERT's names. The first alternative whose blocks exist is used.
    "vit": [
        {"blocks": "layers", "head": "image", "attn": "attention",
         "types": {"mlp_in": "mlp.fc1", "mlp_out": "mlp.fc2", "attn_q": "attention.q_proj",
                   "attn_k": "attention.k_proj", "attn_v": "attention.v_proj", "attn_o": "attention.o_proj"}},
        {"blocks": "encoder.layer", "head": "image", "attn": "attention",
         "types": {"mlp_in": "intermediate.dense", "mlp_out": "output.dense",
                   "attn_q": "attention.attention.query", "attn_k": "attention.attention.key",
                   "attn_v": "attention.attention.value", "attn_o": "attention.output.dense"}},
    ],
    # DecisionTransformerModel: a GPT-2 over (return, state, action) tokens; not a language model.
    "decision_transformer": {
        "blocks": "encoder.h", "head": "none", "attn": "attn",
        "types": {"mlp_in": "mlp.c_fc", "mlp_out": "mlp.c_proj", "attn_qkv": "attn.c_attn", "attn_o": "attn.c_proj"},
    },
}

# Groups usable in place of a type in an EDIT: a prefix of the canonical type names.
GROUPS = {"mlp": "mlp_", "attn": "attn_", "all": ""}


def head_of(model_type: str) -> str:
    """The head an entry loads with: "causal" unless the entry says otherwise."""
    entry = ARCHITECTURES.get(model_type, {})
    entry = entry[0] if isinstance(entry, list) else entry
    return entry.get("head", "causal")
