"""lm-evaluation-harness: run its tasks on the in-memory model, and read its tasks as our rows.

Two uses. `run_harness` hands the model object, as edited at that moment, to lm-eval's own Hugging Face
wrapper and `simple_evaluate` (its numbers, its normalisations). `harness_task` turns a harness task's
documents into our Examples with lm-eval's own request strings (context and continuation, target
delimiter included), so `laser search -t lm-eval:TASK` runs with the prefix cache, the resumable store and
everything else a built-in task has. lm-eval is imported only here, and only when asked for.
"""

from __future__ import annotations

import logging

from ..errors import UserError, first_line
from .tasks.base import Example, Task

INSTALL = "pip install 'laserlm[lmeval]'"
PREFIX = "lm-eval:"


def import_lm_eval():
    try:
        import lm_eval
    except ImportError:
        raise UserError(f"lm-evaluation-harness tasks need lm-eval: {INSTALL}") from None
    logging.getLogger("lm-eval").setLevel(logging.ERROR)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    return lm_eval


def _task_objects(names: list[str], include: str | None) -> dict:
    import_lm_eval()
    from lm_eval.tasks import TaskManager, get_task_dict

    manager = TaskManager(include_path=include) if include else TaskManager()
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        where = f" or in {include}" if include else " (local tasks: --lm-eval-include DIR)"
        raise UserError(f"unknown lm-eval task {', '.join(unknown)}: not among lm-eval's tasks{where}")
    try:
        tasks = get_task_dict(names, manager)
    except Exception as e:  # datasets raises many types for an unreachable hub or a bad data file
        reason = first_line(e)
        raise UserError(f"cannot load lm-eval task {', '.join(names)} ({reason})") from None
    return tasks, manager


def run_harness(model, tokenizer, names: list[str], *, include: str | None = None, limit: int | None = None,
                batch_size: int | None = None, num_fewshot: int | None = None, chat_template: bool = False) -> dict:
    """lm-eval's result dict for `names` on `model` as it is now (apply edits around this call); `num_fewshot` and
    `chat_template` are lm-eval's own `num_fewshot` and `apply_chat_template`."""
    lm_eval = import_lm_eval()
    from lm_eval.models.huggingface import HFLM

    _, manager = _task_objects(names, include)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size or 16,
              device=str(next(model.parameters()).device))
    out = lm_eval.simple_evaluate(model=lm, tasks=names, limit=limit, task_manager=manager, log_samples=False,
                                  bootstrap_iters=0, verbosity="ERROR", num_fewshot=num_fewshot,
                                  apply_chat_template=chat_template)
    return {k: v for k, v in out.items() if k in ("results", "versions", "n-shot", "configs", "n-samples")}


def flat_metrics(result: dict) -> dict[str, float]:
    """{"task/metric": value}, lm-eval's filter suffix (",none") dropped, stderr left out."""
    out = {}
    for task, metrics in result.get("results", {}).items():
        for key, value in metrics.items():
            name, _, filt = key.partition(",")
            if isinstance(value, (int, float)) and "stderr" not in name and name != "alias":
                out[f"{task}/{name}" + ("" if filt in ("", "none") else f"[{filt}]")] = float(value)
    return out


def harness_task(spec: str, include: str | None = None, num_fewshot: int = 0, tokenizer=None) -> Task:
    """A harness task (`lm-eval:NAME`) as our rows, with lm-eval's exact context and continuation strings.

    multiple_choice docs become choice rows; loglikelihood docs become cloze rows whose continuation is lm-eval's
    own, its leading delimiter whatever it is (lm-eval's `acc` there is "every target token greedy", our `top1` for
    single-token targets); generate_until docs become cloze rows scored by `gen01` (a target occurs in the greedy
    generation, cut at the task's `until` strings; lm-eval's own filters and exact_match are `laser eval --lm-eval`'s).
    `num_fewshot` examples are drawn by lm-eval's own sampler; with a `tokenizer`, contexts are rendered with its chat
    template as lm-eval's `apply_chat_template` does. Rows from the task's validation docs are val and from its test
    docs test, when it has both; otherwise they carry no split and --split-seed splits them.
    """
    name = spec[len(PREFIX):]
    tasks, _ = _task_objects([name], include)
    task = tasks[name]
    kind = {"multiple_choice": "choice", "loglikelihood": "cloze", "generate_until": "cloze"}.get(task.OUTPUT_TYPE)
    if kind is None:
        raise UserError(f"lm-eval task {name} is {task.OUTPUT_TYPE}: as a search objective only multiple_choice, "
                        "loglikelihood and generate_until tasks are supported; evaluate it with laser eval --lm-eval")
    generate = task.OUTPUT_TYPE == "generate_until"
    chat = _chat_renderer(tokenizer) if tokenizer is not None else None
    both = task.has_validation_docs() and task.has_test_docs()
    sources = [("val", task.validation_docs()), ("test", task.test_docs())] if both else \
        [(None, task.test_docs() if task.has_test_docs() else task.validation_docs())]
    examples = []
    for split, docs in sources:
        for doc in docs:
            ctx = task.fewshot_context(doc, num_fewshot, apply_chat_template=chat is not None, chat_template=chat)
            requests = task.construct_requests(doc=doc, ctx=ctx, metadata=(name, 0, 1),
                                               apply_chat_template=chat is not None)
            requests = requests if isinstance(requests, list) else [requests]
            context = requests[0].arguments[0]
            prefix = "" if chat is not None else getattr(task.config, "target_delimiter", " ")
            if kind == "choice":
                gold = task.doc_to_target(doc)
                choices = [r.arguments[1] for r in requests]
                label = gold if isinstance(gold, int) else task.doc_to_choice(doc).index(gold)
                examples.append(Example(context, choices=choices, label=label, split=split))
            elif generate:
                targets = task.doc_to_target(doc)
                targets = [str(t) for t in (targets if isinstance(targets, list) else [targets])]
                until = requests[0].arguments[1].get("until") if len(requests[0].arguments) > 1 else None
                examples.append(Example(context, answers=targets, split=split, answer_prefix=prefix,
                                        stop=[u for u in until or [] if isinstance(u, str)]))
            else:  # the continuation exactly as lm-eval scores it, its own leading delimiter or none
                examples.append(Example(context, answers=[requests[0].arguments[1]], split=split, answer_prefix=""))
    for i, ex in enumerate(examples):
        ex.index = i
    gen_tokens = (task.config.generation_kwargs or {}).get("max_gen_toks", 256) if generate else 10
    if kind == "choice":
        primary, metrics = "acc", ["acc", "acc_norm", "logloss", "choice_logloss"]
    elif generate:
        primary, metrics = "gen01", ["gen01", "top1", "logloss"]
    else:
        primary, metrics = "top1", ["top1", "top10", "logloss"]
    return Task(spec, kind, examples, description=f"lm-eval task {name}", primary=primary, metrics=metrics,
                gen_tokens=gen_tokens)


def _chat_renderer(tokenizer):
    """lm-eval's `chat_template` argument: messages to the rendered text, the assistant's turn opened."""
    from .chat import has_template

    if not has_template(tokenizer):
        raise UserError("chat prompts were asked for, but this model's tokenizer has no chat template: score raw "
                        "prompts, or load an instruct model")

    def render(messages, add_generation_prompt: bool = True, **_):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    return render
