"""`--chat-template`: rows as an instruct model is prompted, each prompt the user's turn of the tokenizer's own chat
template and the answer the start of the assistant's turn.

The template is rendered with `add_generation_prompt=True`, so the scored continuation follows the assistant
header exactly as in a conversation; the answer then carries no leading space (a cloze answer is scored as
`answer`, not `" " + answer`; a choice loses its leading whitespace). A template that writes the BOS token itself
has it taken off the text, since encoding adds it again (lm-evaluation-harness avoids the same double BOS by
encoding without special tokens).
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import UserError
from .tasks.base import Example


def has_template(tokenizer) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def render(tokenizer, prompt: str) -> str:
    """The user's turn holding `prompt`, and the assistant's header after it."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos):
        ids = tokenizer("x")["input_ids"]
        if ids and ids[0] == tokenizer.bos_token_id:  # encoding adds BOS: keep one
            text = text[len(bos):]
    return text


def chat_examples(tokenizer, examples: list[Example]) -> list[Example]:
    """The same rows with chat-rendered prompts; metrics, splits and groups unchanged."""
    if not has_template(tokenizer):
        raise UserError("chat prompts were asked for, but this model's tokenizer has no chat template "
                        "(tokenizer_config.json has no chat_template): score raw prompts, or load an instruct model")
    out = []
    for ex in examples:
        choices = [c.lstrip() for c in ex.choices] if ex.choices is not None else None
        out.append(replace(ex, prompt=render(tokenizer, ex.prompt), choices=choices, answer_prefix="",
                           paraphrases=[render(tokenizer, p) for p in ex.paraphrases]))
    return out
