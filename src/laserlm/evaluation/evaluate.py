"""Evaluate a model on task rows: requests -> batched scoring -> per-example records -> metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import UserError
from .generation import Drafts, GenSettings, decode_records, fill_masks_records
from .metrics import Metric, choose_metrics
from .scoring import (Request, Scorer, causal_request, encode_continuation, encode_pair, encode_prompt,
                      masked_at_request, masked_request, max_positions)
from .tasks import Example


@dataclass
class Evaluation:
    metrics: dict[str, float]
    records: list[dict]
    n: int


def _request(scorer: Scorer, prompt_ids, cont_ids, topk: bool, key: tuple, template: str | None = None,
             bare: bool = False) -> Request:
    if scorer.mlm and template:
        return masked_at_request(scorer.tokenizer, template, cont_ids, topk, key, max_positions(scorer.model),
                                 special=not bare)
    if scorer.mlm:
        return masked_request(scorer.tokenizer, prompt_ids, cont_ids, topk, key, max_positions(scorer.model))
    return causal_request(prompt_ids, cont_ids, topk, key, max_positions(scorer.model))


def _pair(scorer: Scorer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Causal LMs encode context and continuation together; masked LMs place the continuation at masks, so
    they encode it on its own."""
    if scorer.mlm:
        return encode_prompt(scorer.tokenizer, context), encode_continuation(scorer.tokenizer, continuation)
    return encode_pair(scorer.tokenizer, context, continuation)


def build_requests(scorer: Scorer, examples: list[Example], paraphrases: bool) -> tuple[list[Request], dict]:
    """Requests for every example, and the encodings the records need (continuation ids, first tokens)."""
    requests: list[Request] = []
    encodings: dict[int, list[list[int]]] = {}  # example -> token ids of each choice, or of each answer
    for i, ex in enumerate(examples):
        if ex.kind == "choice":
            encodings[i] = []
            for c, choice in enumerate(ex.choices):
                prompt_ids, cont_ids = _pair(scorer, ex.prompt, choice)
                encodings[i].append(cont_ids)
                requests.append(_request(scorer, prompt_ids, cont_ids, False, (i, "choice", c), ex.mlm_prompt,
                                         ex.mlm_bare))
            continue
        pairs = [_pair(scorer, ex.prompt, ex.answer_prefix + a) for a in ex.answers]
        encodings[i] = [cont for _, cont in pairs]
        requests.append(_request(scorer, pairs[0][0], pairs[0][1], True, (i, "main", 0), ex.mlm_prompt, ex.mlm_bare))
        if paraphrases:
            for p, text in enumerate(ex.paraphrases):
                para_ids, cont = _pair(scorer, text, ex.answer_prefix + ex.answers[0])
                requests.append(_request(scorer, para_ids, cont[:1], True, (i, "para", p)))
    return requests, encodings


def records_from(examples: list[Example], requests: list[Request], results, encodings: dict) -> list[dict]:
    """Per-example records: every score that a metric or an auditor needs (see metrics.py)."""
    by_example: dict[int, list] = {}
    for req, res in zip(requests, results):
        by_example.setdefault(req.key[0], []).append((req.key, res))
    records = []
    for i, ex in enumerate(examples):
        rec: dict = {"index": ex.index}
        if ex.group is not None:  # rows of one group are resampled together (evaluation/stats.py)
            rec["group"] = ex.group
        items = by_example[i]
        if ex.kind == "choice":
            per_choice = [res.logprobs for key, res in sorted(items, key=lambda kr: kr[0][2])]
            scores = [sum(lp) for lp in per_choice]
            best = max(range(len(scores)), key=lambda c: (scores[c], -c))  # first index on ties
            gold = per_choice[ex.label]
            lse = torch.logsumexp(torch.tensor(scores, dtype=torch.float64), 0).item()
            # lm-eval's acc_norm: log-likelihood per character of the choice, its leading space left out
            norm = [sc / max(1, len(c.lstrip(" "))) for sc, c in zip(scores, ex.choices)]
            rec.update(scores=scores, pred=best, acc=best == ex.label, nll=-sum(gold) / len(gold),
                       acc_norm=max(range(len(norm)), key=lambda c: (norm[c], -c)) == ex.label,
                       choice_logloss=-(scores[ex.label] - lse),
                       continuations=[{"text": c, "ids": ids, "logprob": s}
                                      for c, ids, s in zip(ex.choices, encodings[i], scores)])
        else:
            firsts = {a[0] for a in encodings[i]}
            main = next(res for key, res in items if key[1] == "main")
            rec.update(top1=main.top[0] in firsts, top10=bool(firsts & set(main.top[:10])),
                       nll=-sum(main.logprobs) / len(main.logprobs), pred_token=main.top[0], top10_ids=main.top[:10],
                       continuations=[{"text": ex.answer_prefix + a, "ids": ids}
                                      for a, ids in zip(ex.answers, encodings[i])])
            rec["continuations"][0]["logprob"] = sum(main.logprobs)
            paras = [res.top[0] in firsts for key, res in items if key[1] == "para"]
            if paras:
                rec["para_top1"] = paras
            rec["robust"] = rec["top1"] and all(paras)
        records.append(rec)
    return records


class Prepared:
    """Examples encoded and packed once, to be scored many times (once per edit candidate).

    With a generation metric, the rows' greedy generation is made here, by the model as it is now, and each later
    score() verifies it as a draft (generation.py): pass `drafts` to reuse those of a larger row set's head.
    """

    def __init__(self, scorer: Scorer, examples: list[Example], metrics: list[Metric] | None = None,
                 gen_tokens: int | GenSettings = 10, drafts: Drafts | None = None):
        if scorer.tokenizer is None:
            raise UserError("this model has no tokenizer: evaluation needs one next to the weights")
        if scorer.mlm and getattr(scorer.tokenizer, "mask_token_id", None) is None:
            raise UserError("this masked LM's tokenizer has no mask token: save the model's own tokenizer beside it")
        self.scorer, self.examples = scorer, examples
        self.gen = gen_tokens if isinstance(gen_tokens, GenSettings) else GenSettings(gen_tokens)
        kind = examples[0].kind
        self.metrics = metrics or choose_metrics(kind, None, any(ex.paraphrases for ex in examples))
        self.needs = {m.needs for m in self.metrics}
        self.requests, self.encodings = build_requests(scorer, examples, "paraphrases" in self.needs)
        self.drafts = None
        if "generate" in self.needs and not scorer.mlm:
            self.drafts = drafts or Drafts.make(scorer, [ex.prompt for ex in examples], self.gen)
            self.requests += self.drafts.requests(scorer)
        self.batches = scorer.batches(self.requests)
        self._collated: list | None = None

    def head(self, n: int) -> "Prepared":
        """The first n rows, prepared alike (drafts included: they are not generated again)."""
        return Prepared(self.scorer, self.examples[:n], self.metrics, self.gen,
                        self.drafts.head(n) if self.drafts is not None else None)

    def collated(self) -> list:
        """Every batch as model inputs, in order, laid out once: a search scores the same rows for every
        candidate, and its prefix walk runs them block by block."""
        if self._collated is None:
            self._collated = [self.scorer.collate([[self.requests[i] for i in pack] for pack in batch])
                              for batch in self.batches]
        return self._collated

    def score(self, context=None, progress=None, keep_kv: bool = False) -> Evaluation:
        """Metrics of the model as it is now; `context(b)` wraps the forward of batch b (prefix replay). `keep_kv`:
        the model is unedited, and the drafts keep this pass's keys and values as their base (generation.py)."""
        kv = self.drafts.recording(self.scorer, self.requests) if self.drafts is not None else None
        results = self.scorer.run(self.requests, progress, self.batches, context, self.collated(), kv)
        scored = [(q, r) for q, r in zip(self.requests, results) if q.key[1] != "gen"]
        records = records_from(self.examples, [q for q, _ in scored], [r for _, r in scored], self.encodings)
        if "generate" in self.needs:
            if self.drafts is None:  # a masked LM fills masks: one forward
                fill_masks_records(self.scorer, self.examples, records)
            else:
                checked = {q.key[0]: r for q, r in zip(self.requests, results) if q.key[1] == "gen"}
                generated = self.drafts.finish(self.scorer, checked, kv)
                if keep_kv and context is None and kv is not None and kv.whole and self.drafts.base is None:
                    self.drafts.base = kv
                decode_records(self.scorer.tokenizer, self.examples, self.drafts.prompts, generated, records)
        return Evaluation({m.name: m.fn(records) for m in self.metrics}, records, len(self.examples))


def evaluate(
    scorer: Scorer,
    examples: list[Example],
    metrics: list[Metric] | None = None,
    *,
    gen_tokens: int | GenSettings = 10,
    progress=None,
) -> Evaluation:
    """Score `examples` with the scorer's model as it is now (apply edits around this call)."""
    return Prepared(scorer, examples, metrics, gen_tokens).score(progress=progress)


@torch.inference_mode()
def perplexity(scorer: Scorer, text: str, window: int = 1024, stride: int = 512) -> dict:
    """Sliding-window perplexity (stride 512): each token is scored once, with up to `window` of context."""
    if scorer.mlm:
        raise UserError("perplexity needs a causal LM")
    if scorer.tokenizer is None:
        raise UserError("this model has no tokenizer: perplexity needs one next to the weights")
    if stride < 1 or window < 2:
        raise UserError(f"perplexity needs a stride of at least 1 and a window of at least 2, not {stride} and {window}")
    ids = scorer.tokenizer(text, return_tensors="pt")["input_ids"][0].tolist()
    window = min(window, max_positions(scorer.model) or window)
    if len(ids) < 2:
        raise UserError("the text is too short for perplexity: it needs at least two tokens")
    if stride > window:
        raise UserError(f"the stride {stride} exceeds the window {window}")
    nll, count, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        chunk = ids[begin:end]
        new = end - max(prev_end, begin + 1)  # tokens not yet scored (the very first has no context)
        first = len(chunk) - new
        req = Request(chunk, [(j - 1, chunk[j]) for j in range(first, len(chunk))])
        res = scorer.run([req])[0]
        nll -= sum(res.logprobs)
        count += len(res.logprobs)
        prev_end = end
        if end == len(ids):
            break
    return {"perplexity": math.exp(nll / count), "nll": nll / count, "tokens": count}
