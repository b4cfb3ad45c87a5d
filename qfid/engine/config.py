"""Engine settings, checked once at the boundary so a bad value fails with one clear line."""
from __future__ import annotations

from dataclasses import dataclass

from qfid.engine.speculative import SPECULATIVE_METHODS, is_speculative_method
from qfid.errors import QfidError
from qfid.models.placement import check_dtype_name


@dataclass(slots=True)
class EngineConfig:
    """`num_kv_blocks=None` sizes the KV cache from `kv_cache_gb` (capped at what
    `max_num_seqs` full-length sequences could use); `max_model_len=None` takes the model's
    `max_position_embeddings`. `num_threads` sets torch's intra-op threads for the process
    (None leaves torch's default; on a CPU shared with other work, fewer threads than
    cores avoids threads waiting on each other at every small op).

    `device`: auto (CUDA when torch sees a GPU), cpu, cuda or cuda:N. `dtype`: auto (see
    models/placement.py) or a name. On a GPU the KV cache takes `gpu_memory_utilization` of
    the device's memory less what the model and its largest step use (`kv_cache_gb` is the
    CPU's budget). `attention` forces an attention backend (torch | cpu | triton; else the
    device's default or QFID_ATTENTION). `enforce_eager` turns off CUDA graphs for decode
    steps (vLLM's flag) and, on a CPU, the captured decode step (layers/cpu_decode.py).
    `speculative="ngram"` turns on speculative decoding by prompt lookup,
    `speculative="draft:PATH"` with a draft model sharing the tokenizer, with up to
    `num_speculative_tokens` drafts per step while at most `speculative_max_batch` sequences
    run (engine/speculative.py). Its default, 8, is measured (bench/speculative.py, the
    default model in bf16 on 2 CPU cores, prompt lookup on a copy-the-passage workload):
    x2.14 output tok/s at 1 sequence, x1.26 at 8, x1.03 at 16, where a step is compute-bound
    enough that drafts stop paying."""

    dtype: str = "auto"
    device: str = "auto"
    block_size: int = 16
    num_kv_blocks: int | None = None
    kv_cache_gb: float = 1.0
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 256
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    num_threads: int | None = None
    gpu_memory_utilization: float = 0.9
    attention: str | None = None
    enforce_eager: bool = False
    speculative: str | None = None
    num_speculative_tokens: int = 4
    speculative_max_batch: int = 8

    def __post_init__(self) -> None:
        check_dtype_name(self.dtype)
        if not 0 < self.gpu_memory_utilization <= 1:
            raise QfidError(f"gpu_memory_utilization must be in (0, 1]; got {self.gpu_memory_utilization}")
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise QfidError(f"block_size must be a power of two; got {self.block_size}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise QfidError(f"num_kv_blocks must be at least 1; got {self.num_kv_blocks}")
        if self.kv_cache_gb <= 0:
            raise QfidError(f"kv_cache_gb must be positive; got {self.kv_cache_gb}")
        if self.max_num_batched_tokens < 1 or self.max_num_seqs < 1:
            raise QfidError("max_num_batched_tokens and max_num_seqs must be at least 1")
        if self.num_threads is not None and self.num_threads < 1:
            raise QfidError(f"num_threads must be at least 1; got {self.num_threads}")
        if self.speculative is not None and not is_speculative_method(self.speculative):
            raise QfidError(f"speculative must be one of {', '.join(SPECULATIVE_METHODS)}; got {self.speculative!r}")
        if not 1 <= self.num_speculative_tokens <= 16:
            raise QfidError(f"num_speculative_tokens must be between 1 and 16; got {self.num_speculative_tokens}")
        if self.speculative_max_batch < 1:
            raise QfidError(f"speculative_max_batch must be at least 1; got {self.speculative_max_batch}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise QfidError(f"max_model_len must be at least 2; got {self.max_model_len}")
