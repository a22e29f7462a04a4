"""Greedy generation for gen01 and gen01_paper, at as little more than the cost of scoring as exact ids allow.

A search evaluates hundreds of edits on the same rows, and an edit often leaves a generation, or its first tokens,
as the base model made it. So the rows' greedy generation under the model as it was when they were prepared (the
base model, in a search) is kept as a draft, and each later evaluation verifies it instead of generating afresh, as
speculative decoding does: one teacher-forced pass over prompt + draft (packed with the scoring requests,
prefix-cached by the search like any other) gives the greedy token at every draft position. Up to the first position
where the greedy token differs from the draft, the generation *is* the draft; at that position the greedy token is
the one the pass computed; only the tokens after it need real decoding, by `model.generate()`, for those rows alone,
from the keys and values the passes already computed (kv_reuse.py). A row whose draft is confirmed to its end (EOS,
or the token budget) costs nothing more.

Where the verified logits put two tokens within rounding of each other (a lead under `tolerance`), the pass
does not decide: `generate()` continues from the last certain token. The generated ids are then those of plain
`generate()` (greedy, `min_new_tokens`, the model folder's generation config), which the tests check on every
causal architecture. A generation config with other logits processors (a repetition penalty, say) is not
verified this way: every evaluation then runs plain `generate()`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch

from .greedy import leaves_draft
from .kv_reuse import PassKV, cache_name, prefix_kv, supported, tail_cache, window
from .scoring import Request, Scorer, max_positions

# Logits processors a generation config may switch on: any of them makes a greedy token depend on more than the
# logits, so drafts are not verified (plain generate() every time).
_PROCESSORS = {"repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,),
               "suppress_tokens": (None,), "begin_suppress_tokens": (None,), "forced_bos_token_id": (None,),
               "forced_eos_token_id": (None,), "sequence_bias": (None,), "encoder_repetition_penalty": (None, 1.0),
               "exponential_decay_length_penalty": (None,), "renormalize_logits": (None, False),
               "min_length": (None, 0)}


@dataclass(frozen=True)
class GenSettings:
    """max_new: tokens generated per row; min_new: EOS is barred before this many (the authors pass 1)."""

    max_new: int = 10
    min_new: int = 0


def eos_ids(model, tokenizer) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(tokenizer, "eos_token_id", None)
    return set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])


def unverifiable(model) -> str | None:
    """Why drafts cannot be verified for this model (a logits processor in its generation config), or None."""
    config = getattr(model, "generation_config", None)
    for name, neutral in _PROCESSORS.items():
        value = getattr(config, name, None)
        if value not in neutral:
            return f"its generation config sets {name}={value!r}"
    return None


def greedy_kwargs(scorer: Scorer, max_new: int, min_new: int) -> dict:
    """generate()'s arguments: the model folder's generation config, made greedy (a sampled generation would make
    every candidate's score random), with the protocol's token counts."""
    return dict(max_new_tokens=max_new, min_new_tokens=min_new, do_sample=False, num_beams=1,
                pad_token_id=scorer.pad_id, temperature=None, top_p=None, top_k=None)


@torch.inference_mode()
def generate_ids(scorer: Scorer, prefixes: list[list[int]], budgets: list[int], min_new: list[int],
                 past: list[list[tuple] | None] | None = None, used: list[int] | None = None) -> list[list[int]]:
    """Greedy tokens after each prefix (token ids): at most its budget, cut after the first EOS. Batched with left
    padding: rows of equal min_new together, by length. `past[i]`, where given, holds the keys and values of
    prefix i but its last token at every layer (kv_reuse.py): generate() then runs only that token and the new ones
    (the rows it did so for are appended to `used`)."""
    model, eos = scorer.model, eos_ids(scorer.model, scorer.tokenizer)
    past = past if past is not None else [None] * len(prefixes)
    limit = window(model)
    out: list[list[int]] = [[] for _ in prefixes]
    groups: dict[tuple[int, bool], list[int]] = {}
    for i in range(len(prefixes)):
        groups.setdefault((min_new[i], past[i] is not None), []).append(i)
    for (least, cached), rows in sorted(groups.items()):
        rows.sort(key=lambda i: len(prefixes[i]))
        for idx in _batches(rows, prefixes, budgets, scorer):
            width, most = max(len(prefixes[i]) for i in idx), max(budgets[i] for i in idx)
            ids = torch.full((len(idx), width), scorer.pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, width - len(prefixes[i]):] = torch.tensor(prefixes[i])
                mask[row, width - len(prefixes[i]):] = 1
            given = {}
            if cached and width > 1 and (limit is None or width + most <= limit):
                given[cache_name(model)] = tail_cache(model, [past[i] for i in idx], width)
                if used is not None:
                    used.extend(idx)
            gen = model.generate(input_ids=ids.to(scorer.device), attention_mask=mask.to(scorer.device),
                                 **given, **greedy_kwargs(scorer, most, least))
            for row, i in enumerate(idx):
                toks = gen[row, width:].tolist()[:budgets[i]]
                cut = next((k + 1 for k, t in enumerate(toks) if t in eos), len(toks))
                out[i] = toks[:cut]
    return out  # type: ignore[return-value]


def _batches(rows: list[int], prefixes, budgets, scorer: Scorer):
    """Rows (sorted by length) in batches that fill the scorer's token budget (prefix + new tokens, padding
    included), or of --batch-size rows, as the scorer batches: few, full decoding steps."""
    batch: list[int] = []
    for i in rows:
        width = max(len(prefixes[j]) + budgets[j] for j in batch + [i])
        full = (scorer.batch_size is not None and len(batch) >= scorer.batch_size) or \
            (scorer.batch_size is None and batch and (len(batch) + 1) * width > scorer.max_tokens)
        if full:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


@dataclass
class Drafts:
    """The rows' generations when they were prepared, and how the last evaluation used them. `base` holds the keys
    and values of prompt + draft at every layer under the unedited model (kv_reuse.py), for the decoded tails of
    evaluations whose passes skip blocks (a search's prefix cache); None until a search records them."""

    prompts: list[list[int]]
    ids: list[list[int]]
    settings: GenSettings
    verified: bool  # False: every evaluation runs plain generate()
    last: dict = field(default_factory=dict)  # rows confirmed whole / decoded further, in the last evaluation
    generated: list[list[int]] = field(default_factory=list)  # each row's generation, in the last evaluation
    base: PassKV | None = None

    @classmethod
    def make(cls, scorer: Scorer, prompts: list[str], settings: GenSettings) -> "Drafts":
        ids = [scorer.tokenizer(p)["input_ids"] for p in prompts]
        why = unverifiable(scorer.model)
        if why:
            print(f"laser: generation is not verified against drafts ({why}): each evaluation runs generate()",
                  file=sys.stderr)
        drafts = generate_ids(scorer, ids, [settings.max_new] * len(ids), [settings.min_new] * len(ids))
        return cls(ids, drafts, settings, why is None)

    def record_base(self, scorer: Scorer) -> None:
        """Record, once, the keys and values of prompt + draft at every layer under the model as it is now. A search
        calls this before it walks the layers: they stand for the blocks its passes skip, as the prefix cache's
        hidden states do. Plain evaluations need none (their pass runs every block)."""
        if self.base is None and self.reuses(scorer):
            # The keys are all this pass is for: its requests ask the head for nothing.
            requests = [Request(q.ids, [], None, q.key) for q in self.requests(scorer)]
            self.base = self.recording(scorer, requests)
            scorer.run(requests, kv=self.base)

    def reuses(self, scorer: Scorer) -> bool:
        """Whether tails start from recorded keys and values: verified drafts, a model of the table (its passes
        go through the fast scorer) whose layers keep plain keys and values."""
        return self.verified and scorer.fast and not scorer.mlm and supported(scorer.model)

    def recording(self, scorer: Scorer, requests: list[Request]) -> PassKV | None:
        """What records a pass's keys and values of the gen requests among `requests`, if tails reuse them."""
        if not self.reuses(scorer):
            return None
        return PassKV(scorer.model, {k: q.key[0] for k, q in enumerate(requests) if q.key[1] == "gen"})

    def head(self, n: int) -> "Drafts":
        return Drafts(self.prompts[:n], self.ids[:n], self.settings, self.verified,
                      base=self.base.head(n) if self.base is not None else None)

    def requests(self, scorer: Scorer) -> list[Request]:
        """One teacher-forced request per row, prompt + draft, asking the greedy token at every draft position."""
        if not self.verified:
            return []
        limit = max_positions(scorer.model)
        eos = tuple(sorted(eos_ids(scorer.model, scorer.tokenizer)))
        out = []
        for i, (prompt, draft) in enumerate(zip(self.prompts, self.ids)):
            if limit is not None and len(prompt) + self.settings.max_new > limit:
                continue  # past the context: generate() decides
            p = len(prompt)
            out.append(Request(prompt + draft[:-1], [], None, (i, "gen", 0),
                               [(p - 1 + j, eos if j < self.settings.min_new else ()) for j in range(len(draft))],
                               expect=draft))
        return out

    def finish(self, scorer: Scorer, results: dict[int, object], kv: PassKV | None = None) -> list[list[int]]:
        """Each row's greedy generation now: the verified part of its draft, and generate() for the rest, from the
        keys and values `kv` (this evaluation's pass) and `base` computed where both are at hand."""
        eos = eos_ids(scorer.model, scorer.tokenizer)
        dtype = next(scorer.model.parameters()).dtype
        settings, done, tails = self.settings, [], {}
        results = results if self.verified else {}
        for i, draft in enumerate(self.ids):
            res = results.get(i)
            accepted, complete = ([], False) if res is None else _accept(draft, res, settings, eos, dtype)
            done.append(accepted)
            if not complete:
                tails[i] = accepted
        reused: list[int] = []
        decoded_tokens = 0
        if tails:
            rows = list(tails)
            layers = scorer.model.config.get_text_config(decoder=True).num_hidden_layers
            past = [prefix_kv(i, len(self.prompts[i]) + len(tails[i]) - 1, layers, kv, self.base)
                    if kv is not None else None for i in rows]
            more = generate_ids(scorer, [self.prompts[i] + tails[i] for i in rows],
                                [settings.max_new - len(tails[i]) for i in rows],
                                [max(0, settings.min_new - len(tails[i])) for i in rows], past, reused)
            for i, extra in zip(rows, more):
                done[i] = tails[i] + extra
            decoded_tokens = sum(map(len, more))
        self.generated = done
        self.last = {"rows": len(self.ids), "confirmed": len(self.ids) - len(tails), "decoded": len(tails),
                     "reused": len(reused), "tokens": decoded_tokens}
        return done


def _accept(draft: list[int], res, settings: GenSettings, eos: set[int], dtype) -> tuple[list[int], bool]:
    """(tokens certain now, whether the generation is complete), from the greedy picks along the draft."""
    for j, (token, (value, lead)) in enumerate(zip(res.argmax, res.margins)):
        left = leaves_draft(token, draft[j], value, lead, dtype)
        if left == "tie":
            return draft[:j], False
        if left == "flip":
            accepted = draft[:j] + [token]
            return accepted, token in eos or len(accepted) >= settings.max_new
    return list(draft), True


def decode_records(tokenizer, examples, prompts: list[list[int]], generated: list[list[int]], records: list[dict]):
    """gen01: an answer occurs in the generated text (case-insensitive); gen01_paper: in the prompt and the generation
    decoded together, as the authors did (src/intervention_gptj_bbh_qa.py:101-121: an answer found in the prompt
    counts)."""
    for ex, prompt, gen, rec in zip(examples, prompts, generated, records):
        text = cut_at_stop(tokenizer.decode(gen, skip_special_tokens=True), ex.stop)
        whole = tokenizer.decode(prompt + gen, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        rec.update(generation=text, generation_ids=gen, gen01=hit(ex.answers, text), gen01_paper=hit(ex.answers, whole))


def cut_at_stop(text: str, stops: list[str] | None) -> str:
    """The text up to its first stop string (an lm-eval task's `until`). Greedy decoding is deterministic, so cutting
    a longer generation there gives exactly what stopping at that string would have."""
    ends = [text.find(s) for s in stops or [] if s and s in text]
    return text[:min(ends)] if ends else text


def hit(answers: list[str], text: str) -> bool:
    return any(a.strip().lower() in text.strip().lower() for a in answers)


FILL_MASKS = 5  # src/intervention_roberta_hotpot.py:61 and _bbh.py:61: "{question} <mask> <mask> <mask> <mask> <mask>"


@torch.inference_mode()
def fill_masks_records(scorer: Scorer, examples, records: list[dict]) -> None:
    """A masked LM's generation, as the authors' RoBERTa scripts make it: FILL_MASKS masks after the prompt, the
    argmax at each decoded together. Nothing of the prompt is decoded, so gen01_paper is gen01."""
    tok = scorer.tokenizer
    max_len = max_positions(scorer.model)
    requests = []
    for i, ex in enumerate(examples):
        ids = tok(ex.prompt + (" " + tok.mask_token) * FILL_MASKS)["input_ids"]
        masks = [p for p, t in enumerate(ids) if t == tok.mask_token_id][-FILL_MASKS:]
        if max_len is not None and len(ids) > max_len:  # the prompt loses its start, its first token kept
            drop = len(ids) - max_len
            ids, masks = ids[:1] + ids[1 + drop:], [p - drop for p in masks]
        requests.append(Request(ids, [], None, (i,), [(p, ()) for p in masks]))
    for i, res in enumerate(scorer.run(requests)):
        text = tok.decode(res.argmax)
        records[i]["generation"] = text
        records[i]["gen01"] = records[i]["gen01_paper"] = hit(examples[i].answers, text)
