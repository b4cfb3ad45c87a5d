"""The Python API: `LLM(model).generate(prompts, SamplingParams(...))`, offline batch
generation over the paged continuous-batching engine."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from qfid.engine.config import EngineConfig
from qfid.engine.detokenizer import TextDeltas
from qfid.engine.llm_engine import LLMEngine
from qfid.engine.loader import eos_token_ids, load_model_and_tokenizer, set_num_threads
from qfid.engine.outputs import RequestOutput
from qfid.engine.sampling import SamplingParams
from qfid.errors import QfidError
from qfid.layers.model import build_runtime_model
from qfid.models.placement import resolve_device
from qfid.utils.memory import release_freed_memory


class LLM:
    """Load a model folder, a default-model name or a hub id (dense or quantized by qfid)
    and generate with it. Keyword arguments are EngineConfig fields (dtype, device,
    num_kv_blocks, max_num_batched_tokens, block_size, max_num_seqs, max_model_len,
    kv_cache_gb, gpu_memory_utilization, ...)."""

    def __init__(self, model_path_or_name: str | Path, **engine_options):
        try:
            config = EngineConfig(**engine_options)
        except TypeError as exc:
            raise QfidError(f"unknown engine option: {exc}") from None
        if config.num_threads:
            set_num_threads(config.num_threads)
        device = resolve_device(config.device)
        hf_model, tokenizer, self.model_dir = load_model_and_tokenizer(model_path_or_name, config.dtype, device)
        self.tokenizer = tokenizer
        eos_ids = eos_token_ids(hf_model, tokenizer)
        runtime = build_runtime_model(hf_model, config.attention, config.enforce_eager)
        self.engine = LLMEngine(runtime, tokenizer, config, eos_ids)
        del hf_model
        release_freed_memory()

    def generate(self, prompts: list[str] | list[list[int]] | str,
                 sampling_params: SamplingParams | list[SamplingParams] | None = None) -> list[RequestOutput]:
        """One finished output per prompt, in prompt order."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise QfidError(f"{len(prompts)} prompts but {len(params)} sampling params")
        request_ids = []
        try:
            for prompt, param in zip(prompts, params):
                request_ids.append(self.engine.add_request(prompt, param))
        except QfidError:
            for request_id in request_ids:
                self.engine.abort(request_id)
            raise
        return self._run_until_done(request_ids)

    def stream(self, prompt: str | list[int], sampling_params: SamplingParams | None = None) -> Iterator[tuple[str, RequestOutput]]:
        """Generate for one prompt, yielding (new text, output so far) as tokens arrive."""
        params = sampling_params or SamplingParams()
        request_id = self.engine.add_request(prompt, params)
        deltas = TextDeltas(params.stop)
        try:
            while self.engine.has_unfinished():
                for output in self.engine.step():
                    if output.request_id == request_id:
                        yield deltas.delta(output.text, output.finished), output
                        if output.finished:
                            return
        finally:
            self.engine.abort(request_id)

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        """Token ids of a conversation through the tokenizer's chat template."""
        return self.engine.detokenizer.encode_chat(messages)

    def _run_until_done(self, request_ids: list[int]) -> list[RequestOutput]:
        finished: dict[int, RequestOutput] = {}
        while self.engine.has_unfinished():
            for output in self.engine.step():
                if output.finished:
                    finished[output.request_id] = output
        return [finished[request_id] for request_id in request_ids]
