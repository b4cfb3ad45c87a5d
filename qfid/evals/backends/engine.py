"""The qfid engine as an eval backend (the default): every request of a batch goes into the
paged continuous-batching engine at once, so scoring and generation share its batching.

Log-likelihoods come from the engine's prompt logprobs: the whole (context + continuation)
is submitted as a prompt with `prompt_logprobs=k` starting at the continuation (so the LM head
runs on its few positions, not the whole context), and each continuation position reads the
actual token's logprob (always present) and its top-k. Greedy generation is temperature 0.
Choices that share a context are scored in a second wave that finds the context in the
engine's prefix cache. Tokenisation is lm-eval's, shared with the HF backend, so both score
identical token ids. MoE models' expert routing runs the same runtime model in a
teacher-forced pass of its own (`engine_routing.py` says why).
"""
from __future__ import annotations

from pathlib import Path

from qfid.evals.backends.base import ExpertRouting, Loglikelihood, TopK
from qfid.evals.backends.token_scoring import TokenScoring

GREEDY_PROBE_K = 1


class EngineBackend(TokenScoring):
    name = "engine"

    def __init__(self, llm, batch_size: int = 8, model_dir: Path | None = None):
        self.llm, self.tokenizer, self.batch_size, self.model_dir = llm, llm.tokenizer, batch_size, model_dir
        self.max_length = llm.engine.max_model_len

    @classmethod
    def from_model(cls, model: str, batch_size: int = 8, dtype: str = "auto", **engine_options) -> "EngineBackend":
        from qfid.engine.llm import LLM

        llm = LLM(model, dtype=dtype, **engine_options)
        return cls(llm, batch_size=batch_size, model_dir=llm.model_dir)

    def describe(self) -> dict:
        from qfid.models.loading import quantization_method, read_config
        from qfid.models.placement import dtype_name

        config = self.llm.engine.config
        runtime = self.llm.engine.model_runner.model
        model_config = read_config(Path(self.model_dir)) if self.model_dir else {}
        return {"backend": self.name, "model_dir": str(self.model_dir or ""),
                "architecture": (model_config.get("architectures") or [None])[0], "dtype": dtype_name(runtime.dtype),
                "device": str(runtime.device),
                "quantization": quantization_method(model_config), "batch_size": self.batch_size,
                "block_size": config.block_size}

    def format_chat(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def score_token_pairs(self, pairs: list[tuple[list[int], list[int]]], top_k: int) -> list[Loglikelihood]:
        from qfid.engine.sampling import SamplingParams

        prompts = [(ctx + cont)[-self.max_length:] for ctx, cont in pairs]
        params = [SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=max(top_k, GREEDY_PROBE_K),
                                 prompt_logprobs_start=max(1, len(prompt) - len(cont)), ignore_eos=True)
                  for prompt, (_, cont) in zip(prompts, pairs)]
        outputs: dict[int, object] = {}
        for wave in _prefix_waves(prompts, params):
            outputs.update(zip(wave, self.llm.generate([prompts[i] for i in wave], [params[i] for i in wave])))
        return [_continuation_score(outputs[i].prompt_logprobs, cont, top_k) for i, (_, cont) in enumerate(pairs)]

    def route_token_rows(self, rows: list[list[int]]) -> list[ExpertRouting] | None:
        from qfid.evals.backends.engine_routing import runtime_expert_routing

        engine = self.llm.engine
        return runtime_expert_routing(engine.model_runner.model, rows, engine.config.max_num_batched_tokens)

    def generate(self, prompts: list[str], max_tokens: int, stop: list[str]) -> list[str]:
        from qfid.engine.sampling import SamplingParams

        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, stop=tuple(stop))
        encoded = [self.encode(p)[-(self.max_length - max_tokens):] for p in prompts]
        return [out.text for out in self.llm.generate(encoded, params)]   # the engine cut the stop strings


def _prefix_waves(prompts: list[list[int]], params) -> list[list[int]]:
    """Request indices in two waves: the first request of each distinct context, then the
    rest. Choices of one question share its context; once the first wave has computed it,
    the second wave's requests find it in the prefix cache and compute only their
    continuations (about 3-4x fewer tokens for a four-choice suite). Empty waves dropped."""
    first, rest, seen = [], [], set()
    for i, (prompt, p) in enumerate(zip(prompts, params)):
        context = tuple(prompt[:p.prompt_logprobs_start - 1])
        (rest if context in seen else first).append(i)
        seen.add(context)
    return [wave for wave in (first, rest) if wave]


def _continuation_score(prompt_logprobs: list[dict[int, float] | None], continuation: list[int], top_k: int) -> Loglikelihood:
    """Sum the continuation tokens' logprobs from the tail of the prompt-logprob list; greedy
    when each actual token is the most likely one at its position."""
    entries = prompt_logprobs[len(prompt_logprobs) - len(continuation):]
    total, greedy, ids, values = 0.0, True, [], []
    for token, entry in zip(continuation, entries):
        total += entry[token]
        greedy = greedy and entry[token] >= max(entry.values())
        if top_k > 0:
            ranked = sorted(entry.items(), key=lambda kv: -kv[1])[:top_k]
            ids.append([t for t, _ in ranked])
            values.append([v for _, v in ranked])
    topk = TopK(ids=ids, logprobs=values) if top_k > 0 else None
    return Loglikelihood(logprob=total, is_greedy=greedy, n_tokens=len(continuation), topk=topk)
