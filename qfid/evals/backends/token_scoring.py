"""lm-eval's tokenisation for log-likelihood requests, shared by every backend that scores
token ids itself (HF transformers, the qfid engine): context and continuation split as
lm-eval splits them, rolling perplexity in disjoint windows from the end-of-text token.
A subclass provides `tokenizer`, `max_length` and `score_token_pairs(pairs, top_k)`, and
for MoE models `route_token_rows(rows)`.

Expert routing is taken on the same token ids in every backend: the request's context +
continuation, cut to its last `max_length` tokens, every one of them (the continuation's
last token included: the model reads it even though no scored log-prob depends on it), so
an HF-backend run and an engine-backend run of one model line up position by position.
"""
from __future__ import annotations

from qfid.evals.backends.base import ExpertRouting, Loglikelihood, Rolling


class TokenScoring:
    tokenizer = None
    max_length: int = 2048

    def score_token_pairs(self, pairs: list[tuple[list[int], list[int]]], top_k: int) -> list[Loglikelihood]:
        raise NotImplementedError

    def route_token_rows(self, rows: list[list[int]]) -> list[ExpertRouting] | None:
        """Each row's routing, or None when the model has no experts (the default)."""
        return None

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def _prefix_id(self) -> int:
        tok = self.tokenizer
        return tok.eos_token_id if tok.eos_token_id is not None else tok.bos_token_id

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's split: trailing spaces move to the continuation, whole string encoded once."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        if not context:
            return [self._prefix_id()], self.encode(continuation)
        whole, context_ids = self.encode(context + continuation), self.encode(context)
        return context_ids, whole[len(context_ids):]

    def loglikelihood(self, requests: list[tuple[str, str]], top_k: int = 0) -> list[Loglikelihood]:
        return self.score_token_pairs([self._encode_pair(c, x) for c, x in requests], top_k)

    def loglikelihood_rolling(self, texts: list[str]) -> list[Rolling]:
        """Disjoint windows of max_length tokens, each predicted from the token before it."""
        pairs, owners = [], []
        for index, text in enumerate(texts):
            tokens = self.encode(text)
            inputs = [self._prefix_id(), *tokens]
            for start in range(0, len(tokens), self.max_length):
                pairs.append(([inputs[start]], tokens[start:start + self.max_length]))
                owners.append(index)
        totals = [[0.0, 0] for _ in texts]
        for owner, result in zip(owners, self.score_token_pairs(pairs, 0)):
            totals[owner][0] += result.logprob
            totals[owner][1] += result.n_tokens
        return [Rolling(logprob=lp, n_tokens=n) for lp, n in totals]

    def expert_routing(self, requests: list[tuple[str, str]]) -> list[ExpertRouting] | None:
        """Per (context, continuation): the router's top-k experts at every token the model
        reads for it (see the module docstring); None for a dense model."""
        pairs = [self._encode_pair(c, x) for c, x in requests]
        return self.route_token_rows([(ctx + cont)[-self.max_length:] for ctx, cont in pairs])
