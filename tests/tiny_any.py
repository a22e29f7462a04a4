"""A tiny random model of any causal-LM type transformers ships, from its own default config with sizes shrunk.

`tiny_any(model_type)` is what the structure tests run on: every type of `MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`, no
table, no downloads. Sizes are set where the config has the attribute and accepts it; the vocabulary is the demo
tokenizer's (49,152), so a folder saved with that tokenizer runs `laser search` as a user's would.
"""

from __future__ import annotations

import warnings

import torch

SIZES = dict(hidden_size=64, n_embd=64, d_model=64, intermediate_size=128, ffn_dim=128, n_inner=128,
             num_hidden_layers=2, n_layer=2, num_layers=2, n_layers=2, num_attention_heads=4, n_head=4, n_heads=4,
             num_heads=4, num_key_value_heads=2, head_dim=16, moe_intermediate_size=32,
             shared_expert_intermediate_size=32, num_local_experts=4, num_experts=4, n_routed_experts=4,
             num_experts_per_tok=2, max_position_embeddings=512, n_positions=512, vocab_size=49152)
TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "sep_token_id")


def _shrink(config, vocab: int) -> None:
    for key, value in {**SIZES, "vocab_size": vocab}.items():
        try:
            current = getattr(config, key, None)
        except Exception:  # noqa: BLE001 - per-layer attributes raise on read
            continue
        if isinstance(current, int) and not isinstance(current, bool):
            try:
                setattr(config, key, value)
            except Exception:  # noqa: BLE001 - read-only properties
                pass
    n = getattr(config, "num_hidden_layers", None)
    for key in ("layer_types", "layers_block_type", "mlp_only_layers"):
        value = getattr(config, key, None)
        if isinstance(value, list) and n and len(value) > n:
            try:
                setattr(config, key, value[:n])
            except Exception:  # noqa: BLE001
                pass
    for key in TOKEN_IDS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value >= vocab:
            setattr(config, key, 0)
        if isinstance(value, list):
            setattr(config, key, [v if v < vocab else 0 for v in value])


def tiny_config(model_type: str, vocab: int = 49152):
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type)
    for sub in ("text_config", "vision_config", "audio_config"):
        if getattr(config, sub, None) is not None:
            _shrink(getattr(config, sub), vocab)
    _shrink(config, vocab)
    return config


class TooLarge(Exception):
    """The config keeps sizes the shrinking does not reach (nested sub-configs): not tiny, not built."""


def tiny_any(model_type: str, seed: int = 0, vocab: int = 49152, dtype=torch.float32, max_params: int = 30_000_000):
    from transformers import AutoModelForCausalLM

    config = tiny_config(model_type, vocab)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):  # counted before any memory is spent
            n = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
        if n > max_params:
            raise TooLarge(f"{model_type} keeps {n:,} parameters after shrinking")
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    with torch.no_grad():  # off the init's symmetric values, so a stray write would show
        for p in model.parameters():
            if p.is_floating_point():
                p.add_(torch.randn_like(p) * 0.02)
    return model.eval()
