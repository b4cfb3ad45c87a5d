"""The engine loop: requests in, `step()` = schedule -> run -> postprocess, outputs out.

Everything the scheduler must not know about (tokenizers, text, stop strings, logprob
bookkeeping) happens here, around the three calls of `step()`.
"""
from __future__ import annotations

from dataclasses import dataclass

from qfid.engine.block_manager import BlockManager
from qfid.engine.config import EngineConfig
from qfid.engine.detokenizer import Detokenizer, OutputText, stop_string_cut
from qfid.engine.kv_cache import num_kv_blocks
from qfid.engine.model_runner import ModelRunner, StepOutput
from qfid.engine.outputs import RequestOutput
from qfid.engine.sampling import SamplingParams
from qfid.engine.scheduler import ScheduledBatch, Scheduler
from qfid.engine.sequence import Sequence
from qfid.engine.speculative import make_proposer
from qfid.errors import QfidError


@dataclass
class Request:
    """Engine-side state of a request that the scheduler's Sequence does not carry."""

    seq: Sequence
    output_text: OutputText      # its output's text, decoded as it grows
    text_end: int | None = None  # where a stop string cut the text


class LLMEngine:
    def __init__(self, model, tokenizer, config: EngineConfig, eos_token_ids: frozenset[int]):
        self.config = config
        self.detokenizer = Detokenizer(tokenizer)
        self.max_model_len = config.max_model_len or model.config.max_position_embeddings
        self.vocab_size = model.embed_tokens.num_embeddings
        num_blocks = num_kv_blocks(model, config, self.max_model_len)
        self.block_manager = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs, config.max_num_batched_tokens,
                                   self.max_model_len, eos_token_ids, make_proposer(config, model, self.max_model_len),
                                   config.speculative_max_batch)
        self.model_runner = ModelRunner(model, num_blocks, config.block_size, config.max_num_seqs, self.max_model_len,
                                        use_graphs=not config.enforce_eager)
        self.requests: dict[int, Request] = {}

    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None) -> int:
        token_ids = self.detokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not token_ids:
            raise QfidError("the prompt is empty")
        if min(token_ids) < 0 or max(token_ids) >= self.vocab_size:
            raise QfidError(f"prompt token ids must be in [0, {self.vocab_size}); a bad id would fail the whole batch")
        seq = Sequence(token_ids, params or SamplingParams())
        self.scheduler.add(seq)
        self.requests[seq.seq_id] = Request(seq, self.detokenizer.output_text())
        return seq.seq_id

    def abort(self, request_id: int) -> None:
        request = self.requests.pop(request_id, None)
        if request is not None:
            self.scheduler.finish(request.seq, "abort")

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[RequestOutput]:
        """One forward pass; outputs of the requests that advanced (finished ones last seen here)."""
        batch = self.scheduler.schedule()
        if not batch:
            return []
        output = self.model_runner.run(batch)
        record_logprobs(batch, output)
        self.scheduler.postprocess(batch, output.token_ids)
        return [self._output(seq) for seq, token in zip(batch.seqs, output.token_ids) if token is not None]

    def _output(self, seq: Sequence) -> RequestOutput:
        request = self.requests[seq.seq_id]
        text = request.output_text.update(seq.output_token_ids)
        if seq.params.stop and request.text_end is None:
            request.text_end = stop_string_cut(text, seq.params.stop)
            if request.text_end is not None:
                self.scheduler.finish(seq, "stop")
                seq.finish_reason = "stop"  # also when the same token hit max_tokens
        if seq.is_finished:   # the final text: the whole output decoded once, exactly decode(ids)
            text = self.detokenizer.text(seq.output_token_ids)
        if request.text_end is not None:
            text = text[:request.text_end]
        if seq.is_finished:
            del self.requests[seq.seq_id]
        params = seq.params
        return RequestOutput(
            request_id=seq.seq_id,
            prompt_token_ids=seq.token_ids[:seq.num_prompt_tokens],
            token_ids=seq.output_token_ids,
            text=text,
            finish_reason=seq.finish_reason,
            logprobs=list(seq.output_logprobs) if params.logprobs is not None else None,
            prompt_logprobs=_full_prompt_logprobs(seq) if params.prompt_logprobs is not None else None,
        )


def record_logprobs(batch: ScheduledBatch, output: StepOutput) -> None:
    """Append this step's logprob entries; prompt positions arrive in order, a position
    already scored before a preemption is not scored twice, and positions skipped before
    `prompt_logprobs_start` read None."""
    for seq, entry, prompt_entries in zip(batch.seqs, output.logprobs, output.prompt_logprobs):
        if isinstance(entry, list):   # verified drafts: one entry per emitted token
            seq.output_logprobs.extend(entry)
        elif entry is not None:
            seq.output_logprobs.append(entry)
        for position in sorted(prompt_entries):
            if position >= len(seq.prompt_logprobs):
                seq.prompt_logprobs.extend([None] * (position - len(seq.prompt_logprobs)))
                seq.prompt_logprobs.append(prompt_entries[position])


def _full_prompt_logprobs(seq) -> list[dict[int, float] | None]:
    """One entry per prompt token, None where nothing was scored."""
    entries = list(seq.prompt_logprobs)
    return entries + [None] * (seq.num_prompt_tokens - len(entries))
