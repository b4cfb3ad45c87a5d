"""HF transformers backend: batched, greedy, exact log-likelihoods on any causal LM that
transformers loads. The reference the qfid engine backend is checked against.

Scoring batches are right-padded (positions stay 0..n-1, so padding changes nothing);
generation batches are left-padded so every row's next token sits in the last column.
MoE models' expert routing comes from the router logits transformers returns
(`hf_routing.py`), in one more forward over each item's gold request, right-padded like scoring.
"""
from __future__ import annotations

from pathlib import Path

from qfid.evals.backends.base import ExpertRouting, Loglikelihood, TopK, cut_at_stop
from qfid.evals.backends.token_scoring import TokenScoring


class HFBackend(TokenScoring):
    name = "hf"

    def __init__(self, model, tokenizer, batch_size: int = 8, model_dir: Path | None = None):
        import torch

        self.model, self.tokenizer, self.batch_size, self.model_dir = model, tokenizer, batch_size, model_dir
        self.device = next(model.parameters()).device
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.max_length = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
        self._torch = torch

    @classmethod
    def from_model(cls, model: str, batch_size: int = 8, dtype: str = "auto", device: str | None = None) -> "HFBackend":
        """`dtype` and `device` as the engine reads them (models/placement.py; auto: the GPU when
        torch sees one), so both backends run a model the same way by default."""
        from qfid.models.placement import resolve_device
        from qfid.models.placement import resolve_dtype
        from qfid.models.loading import read_config, resolve_model_dir
        from qfid.quant.formats import load_quantized_or_dense, load_tokenizer

        model_dir = resolve_model_dir(model)
        target = resolve_device(device or "auto")
        # quantized checkpoints (AWQ / compressed-tensors) load with qfid's reference layers
        loaded = load_quantized_or_dense(model_dir, dtype=resolve_dtype(dtype, read_config(model_dir), target),
                                         device=target)
        tokenizer = load_tokenizer(model_dir)
        return cls(loaded, tokenizer, batch_size=batch_size, model_dir=model_dir)

    def describe(self) -> dict:
        config = self.model.config
        quant = getattr(config, "quantization_config", None)
        return {"backend": self.name, "model_dir": str(self.model_dir or ""), "architecture": (config.architectures or [None])[0],
                "dtype": str(self.model.dtype).removeprefix("torch."), "device": str(self.device), "batch_size": self.batch_size,
                "quantization": (quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None))}

    def format_chat(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    # --- scoring -------------------------------------------------------------------
    def score_token_pairs(self, pairs: list[tuple[list[int], list[int]]], top_k: int) -> list[Loglikelihood]:
        """Log-likelihood of each continuation given its context, longest first in batches."""
        return self._longest_first(pairs, lambda pair: len(pair[0]) + len(pair[1]), lambda batch: self._score_batch(batch, top_k))

    def route_token_rows(self, rows: list[list[int]]) -> list[ExpertRouting] | None:
        from qfid.evals.backends.hf_routing import batch_routing, experts_per_token

        k = experts_per_token(self.model.config)
        if k is None:
            return None
        return self._longest_first(rows, len, lambda batch: batch_routing(self.model, *self._padded(batch, left=False), k))

    def _longest_first(self, items: list, length, run_batch) -> list:
        """`run_batch` over batches of `batch_size` items, longest first so a batch's rows
        need little padding; the results in item order."""
        results: list = [None] * len(items)
        order = sorted(range(len(items)), key=lambda i: -length(items[i]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            for index, result in zip(batch, run_batch([items[i] for i in batch])):
                results[index] = result
        return results

    def _padded(self, rows: list[list[int]], left: bool):
        """(input ids, attention mask) on the model's device, rows padded on the left or right."""
        torch = self._torch
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            columns = slice(width - len(row), width) if left else slice(0, len(row))
            ids[i, columns] = torch.tensor(row)
            mask[i, columns] = 1
        return ids.to(self.device), mask.to(self.device)

    def _score_batch(self, pairs, top_k: int) -> list[Loglikelihood]:
        rows = [(ctx + cont)[-(self.max_length + 1):][:-1] for ctx, cont in pairs]
        ids, mask = self._padded(rows, left=False)
        with self._torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask).logits
        return [self._continuation_score(logits[i], len(rows[i]), pairs[i][1], top_k) for i in range(len(rows))]

    def _continuation_score(self, logits, length: int, continuation: list[int], top_k: int) -> Loglikelihood:
        torch = self._torch
        positions = logits[length - len(continuation):length].float().log_softmax(dim=-1)
        target = torch.tensor(continuation, device=positions.device)
        token_logprobs = positions.gather(1, target[:, None]).squeeze(1)
        greedy = bool((positions.argmax(dim=-1) == target).all())
        topk = None
        if top_k > 0:
            values, indices = positions.topk(min(top_k, positions.shape[-1]), dim=-1)
            topk = TopK(ids=indices.tolist(), logprobs=values.tolist())
        return Loglikelihood(logprob=float(token_logprobs.sum()), is_greedy=greedy, n_tokens=len(continuation), topk=topk)

    # --- generation ----------------------------------------------------------------
    def generate(self, prompts: list[str], max_tokens: int, stop: list[str]) -> list[str]:
        encoded = [self.encode(p)[-(self.max_length - max_tokens):] for p in prompts]
        return self._longest_first(encoded, len, lambda batch: self._generate_batch(batch, max_tokens, stop))

    def _generate_batch(self, rows: list[list[int]], max_tokens: int, stop: list[str]) -> list[str]:
        width = max(len(r) for r in rows)
        ids, mask = self._padded(rows, left=True)
        with self._torch.inference_mode():
            out = self.model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_tokens,
                do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=self.tokenizer.pad_token_id,
                stopping_criteria=_stop_criteria(self.tokenizer, width, stop),
            )
        texts = self.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        return [cut_at_stop(text, stop) for text in texts]


def _stop_criteria(tokenizer, prompt_width: int, stop: list[str]):
    """Stop a row once its new text holds a stop string, the batch once every row has."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopStrings(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            import torch

            texts = tokenizer.batch_decode(input_ids[:, prompt_width:], skip_special_tokens=True)
            return torch.tensor([any(s in t for s in stop) for t in texts], device=input_ids.device)

    return StoppingCriteriaList([StopStrings()] if stop else [])
