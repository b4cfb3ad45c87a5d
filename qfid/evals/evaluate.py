"""Evaluate one batch of a suite's items on a backend and turn the results into records.

Three shapes of work, chosen by the scorer: multiple choice by log-likelihood (one request
per choice; `correct` by summed log-prob, `correct_norm` by log-prob per character),
generation (greedy text, then the gold answer's log-likelihood for KL), and perplexity
(rolling log-likelihood of the text). Every record carries the gold answer's
log-prob and its top-k next-token log-probs, taken on the *gold* tokens so that any two
runs of the same suite and tokenizer line up position by position.

On an MoE model a scored record also carries the expert routing of that same gold request
(prompt + gold answer, teacher-forced): `expert_ids`, per MoE layer the top-k expert ids of
every token, token after token, and `expert_k`, the k. Dense models, perplexity suites and
backends that cannot see routing (an OpenAI endpoint) leave both null.

Each shape fills every field of an `EvalRecord` (record.py) explicitly; the ones it has no
value for are None.
"""
from __future__ import annotations

from collections.abc import Callable

from qfid.evals.backends.base import Backend, Loglikelihood
from qfid.evals.items import Item
from qfid.evals.record import EvalRecord
from qfid.evals.render import TARGET_DELIMITER, choice_continuations, choice_targets, gold_target, render_chat, render_plain
from qfid.evals.scoring import score_choice, score_choice_norm, score_generation
from qfid.evals.suite import Suite

ChatFormatter = Callable[[list[dict]], str]


def prompt_for(suite: Suite, item: Item, chat: ChatFormatter | None) -> str:
    return chat(render_chat(suite, item)) if chat else render_plain(suite, item)


def evaluate_batch(backend: Backend, suite: Suite, items: list[Item], top_k: int = 10,
                   chat: ChatFormatter | None = None, max_tokens: int | None = None) -> list[EvalRecord]:
    if suite.scorer.type == "perplexity":
        return _perplexity(backend, suite, items)
    prompts = [prompt_for(suite, item, chat) for item in items]
    if suite.scorer.uses_loglikelihood:
        return _multiple_choice(backend, suite, items, prompts, top_k)
    return _generative(backend, suite, items, prompts, top_k, max_tokens or suite.generation.max_tokens)


def _base(suite: Suite, item: Item, prompt: str) -> dict:
    return {"suite": suite.name, "id": item.id, "base_id": item.base_id, "category": item.category, "lang": item.lang,
            "difficulty": item.difficulty, "scorer": suite.scorer.type, "prompt": prompt, "gold": gold_target(suite, item)}


_NO_CHOICE = {"pred_index": None, "choice_logprobs": None, "correct_norm": None}
_NO_ROUTING = {"expert_ids": None, "expert_k": None}
_NO_ANSWER = {"prediction": None, "extracted": None, "correct": None, "answer_greedy": None, "topk_ids": None, "topk_logprobs": None}


def _answer_fields(result: Loglikelihood) -> dict:
    return {"answer_logprob": result.logprob, "answer_tokens": result.n_tokens, "answer_greedy": result.is_greedy,
            "topk_ids": result.topk.ids if result.topk else None, "topk_logprobs": result.topk.logprobs if result.topk else None}


def _routing_fields(backend, gold_requests: list[tuple[str, str]]) -> list[dict]:
    """Per gold request, `expert_ids` / `expert_k` from a backend that records routing; None
    for a dense model or a backend without `expert_routing`."""
    record = getattr(backend, "expert_routing", None)
    routes = record(gold_requests) if record else None
    if routes is None:
        return [_NO_ROUTING for _ in gold_requests]
    return [{"expert_ids": route.ids, "expert_k": route.k} for route in routes]


def _multiple_choice(backend, suite, items, prompts, top_k) -> list[EvalRecord]:
    requests, spans = [], []
    for item, prompt in zip(items, prompts):
        continuations = choice_continuations(suite, item)
        spans.append((len(requests), len(continuations)))
        requests += [(prompt, continuation) for continuation in continuations]
    results = backend.loglikelihood(requests, top_k)
    routing = _routing_fields(backend, [requests[start + item.label] for item, (start, _) in zip(items, spans)])
    records = []
    for item, prompt, (start, count), route in zip(items, prompts, spans, routing):
        scored = results[start:start + count]
        logprobs = [r.logprob for r in scored]
        index, judged = score_choice(item, logprobs)
        _, judged_norm = score_choice_norm(item, logprobs, choice_targets(suite, item))
        records.append(EvalRecord(**_base(suite, item, prompt), prediction=item.choices[index], extracted=judged.extracted,
                                  correct=judged.correct, correct_norm=judged_norm.correct, pred_index=index,
                                  choice_logprobs=logprobs, **_answer_fields(scored[item.label]), **route))
    return records


def _generative(backend, suite, items, prompts, top_k, max_tokens) -> list[EvalRecord]:
    predictions = backend.generate(prompts, max_tokens, list(suite.generation.stop))
    gold_requests = [(p, TARGET_DELIMITER + gold_target(suite, i)) for p, i in zip(prompts, items)]
    golds = backend.loglikelihood(gold_requests, top_k)
    records = []
    for item, prompt, prediction, gold, route in zip(items, prompts, predictions, golds, _routing_fields(backend, gold_requests)):
        judged = score_generation(suite.scorer, item, prediction)
        records.append(EvalRecord(**_base(suite, item, prompt), prediction=prediction, extracted=judged.extracted,
                                  correct=judged.correct, **_NO_CHOICE, **_answer_fields(gold), **route))
    return records


def _perplexity(backend, suite, items) -> list[EvalRecord]:
    texts = [item.fields["text"] for item in items]
    return [EvalRecord(**_base(suite, item, ""), **_NO_ANSWER, **_NO_CHOICE, **_NO_ROUTING, answer_logprob=result.logprob,
                       answer_tokens=result.n_tokens) for item, result in zip(items, backend.loglikelihood_rolling(texts))]
