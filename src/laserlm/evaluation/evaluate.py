"""Evaluate a model on task rows: requests -> batched scoring -> per-example records -> metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import UserError
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
        pairs = [_pair(scorer, ex.prompt, " " + a) for a in ex.answers]
        encodings[i] = [cont for _, cont in pairs]
        requests.append(_request(scorer, pairs[0][0], pairs[0][1], True, (i, "main", 0), ex.mlm_prompt, ex.mlm_bare))
        if paraphrases:
            for p, text in enumerate(ex.paraphrases):
                para_ids, cont = _pair(scorer, text, " " + ex.answers[0])
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
                       continuations=[{"text": " " + a, "ids": ids} for a, ids in zip(ex.answers, encodings[i])])
            rec["continuations"][0]["logprob"] = sum(main.logprobs)
            paras = [res.top[0] in firsts for key, res in items if key[1] == "para"]
            if paras:
                rec["para_top1"] = paras
            rec["robust"] = rec["top1"] and all(paras)
        records.append(rec)
    return records


FILL_MASKS = 5  # src/intervention_roberta_hotpot.py:61 and _bbh.py:61: "{question} <mask> <mask> <mask> <mask> <mask>"


def _hit(answers: list[str], text: str) -> bool:
    return any(a.strip().lower() in text.strip().lower() for a in answers)


@torch.inference_mode()
def fill_masks_records(scorer: Scorer, examples: list[Example], records: list[dict]) -> None:
    """A masked LM's generation, as the authors' RoBERTa scripts make it: FILL_MASKS masks after the prompt, the
    argmax at each decoded together. Nothing of the prompt is decoded, so gen01_paper is gen01."""
    tok = scorer.tokenizer
    max_len = max_positions(scorer.model)
    requests = []
    for i, ex in enumerate(examples):
        ids = encode_prompt(tok, ex.prompt + (" " + tok.mask_token) * FILL_MASKS)
        masks = [p for p, t in enumerate(ids) if t == tok.mask_token_id][-FILL_MASKS:]
        if max_len is not None and len(ids) > max_len:  # the prompt loses its start, its first token kept
            drop = len(ids) - max_len
            ids, masks = ids[:1] + ids[1 + drop:], [p - drop for p in masks]
        requests.append(Request(ids, [(p, 0) for p in masks], None, (i,)))
    for batch in scorer.batches(requests):
        flat = [i for pack in batch for i in pack]
        inputs = scorer.collate([[requests[i]] for i in flat])
        rows = torch.tensor([j for j, i in enumerate(flat) for _ in requests[i].targets], device=scorer.device)
        cols = torch.tensor([p for i in flat for p, _ in requests[i].targets], device=scorer.device)
        logits = (scorer.head(scorer.hidden(inputs)[rows, cols]) if scorer.fast
                  else scorer.full_logits(inputs)[rows, cols])
        best = logits.argmax(-1).tolist()
        for i in flat:
            text = tok.decode(best[:FILL_MASKS])
            best = best[FILL_MASKS:]
            records[i]["generation"] = text
            records[i]["gen01"] = records[i]["gen01_paper"] = _hit(examples[i].answers, text)


@torch.inference_mode()
def generate_records(scorer: Scorer, examples: list[Example], records: list[dict], max_new_tokens: int) -> None:
    """gen01: greedy generation, only the generated tokens decoded; gen01_paper: the prompt decoded with them.
    Masked LMs fill masks instead (fill_masks_records)."""
    if scorer.mlm:
        return fill_masks_records(scorer, examples, records)
    tok, model = scorer.tokenizer, scorer.model
    old_side = tok.padding_side
    tok.padding_side = "left"
    try:
        step = scorer.batch_size or 32
        order = sorted(range(len(examples)), key=lambda i: len(examples[i].prompt))
        for start in range(0, len(order), step):
            idx = order[start:start + step]
            enc = tok([examples[i].prompt for i in idx], return_tensors="pt", padding=True).to(scorer.device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=scorer.pad_id, num_beams=1)
            for row, i in enumerate(idx):
                text = tok.decode(out[row, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                # The authors decode prompt and generation together (src/intervention_gptj_bbh_qa.py:101-121):
                # an answer that occurs in the prompt counts as correct. Kept as gen01_paper, for comparison.
                whole = tok.decode(out[row], skip_special_tokens=True, clean_up_tokenization_spaces=False)
                records[i]["generation"] = text
                records[i]["gen01"] = _hit(examples[i].answers, text)
                records[i]["gen01_paper"] = _hit(examples[i].answers, whole)
    finally:
        tok.padding_side = old_side


class Prepared:
    """Examples encoded and packed once, to be scored many times (once per edit candidate)."""

    def __init__(self, scorer: Scorer, examples: list[Example], metrics: list[Metric] | None = None,
                 gen_tokens: int = 10):
        if scorer.tokenizer is None:
            raise UserError("this model has no tokenizer: evaluation needs one next to the weights")
        self.scorer, self.examples, self.gen_tokens = scorer, examples, gen_tokens
        kind = examples[0].kind
        self.metrics = metrics or choose_metrics(kind, None, any(ex.paraphrases for ex in examples))
        self.needs = {m.needs for m in self.metrics}
        self.requests, self.encodings = build_requests(scorer, examples, "paraphrases" in self.needs)
        self.batches = scorer.batches(self.requests)
        self._collated: list | None = None

    def collated(self) -> list:
        """Every batch as model inputs, in order, laid out once: a search scores the same rows for every
        candidate, and its prefix walk runs them block by block."""
        if self._collated is None:
            self._collated = [self.scorer.collate([[self.requests[i] for i in pack] for pack in batch])
                              for batch in self.batches]
        return self._collated

    def score(self, context=None, progress=None) -> Evaluation:
        """Metrics of the model as it is now; `context(b)` wraps the forward of batch b (prefix replay)."""
        results = self.scorer.run(self.requests, progress, self.batches, context, self.collated())
        records = records_from(self.examples, self.requests, results, self.encodings)
        if "generate" in self.needs:
            generate_records(self.scorer, self.examples, records, self.gen_tokens)
        return Evaluation({m.name: m.fn(records) for m in self.metrics}, records, len(self.examples))


def evaluate(
    scorer: Scorer,
    examples: list[Example],
    metrics: list[Metric] | None = None,
    *,
    gen_tokens: int = 10,
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
        raise UserError(f"perplexity needs --stride of at least 1 and --window of at least 2, not {stride} and {window}")
    ids = scorer.tokenizer(text, return_tensors="pt")["input_ids"][0].tolist()
    window = min(window, max_positions(scorer.model) or window)
    if len(ids) < 2:
        raise UserError("the text is too short for perplexity: it needs at least two tokens")
    if stride > window:
        raise UserError(f"--stride {stride} exceeds the window {window}")
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
