"""The paged KV cache: how many blocks fit, and the per-layer (K, V) tensors on the engine's
device, in the layout the attention backends read ([kv_heads, num_blocks, block_size, d]).

On a CPU the size comes from `kv_cache_gb` and the tensors are zeros the OS maps on first
touch. On a GPU the size comes from what is free after a profiling forward at the step's
largest shape (`max_num_batched_tokens` tokens, `max_num_seqs` LM-head rows), times
`gpu_memory_utilization`, as vLLM sizes it: the cache takes what the model and its largest
step leave.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from qfid.engine.config import EngineConfig
from qfid.layers.attention import AttentionMetadata, PrefillChunk


def kv_block_bytes(model, block_size: int) -> int:
    layers, kv_heads, dim = model.kv_shape
    return 2 * layers * kv_heads * dim * block_size * torch.empty((), dtype=model.dtype).element_size()


def lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Zeros whose pages the OS maps on first touch (numpy allocates zeros with calloc),
    so a large KV cache costs no start-up time and only the memory actually used. Zeros,
    not garbage: padded attention positions read never-written slots, and 0 * NaN is NaN."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    raw = np.zeros(math.prod(shape) * itemsize, dtype=np.uint8)
    return torch.from_numpy(raw).view(dtype).view(shape)


def allocate_kv_cache(model, num_blocks: int, block_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer a zeroed (K, V) pair on the model's device."""
    layers, kv_heads, dim = model.kv_shape
    shape = (kv_heads, num_blocks, block_size, dim)
    if model.device.type == "cpu":
        return [(lazy_zeros(shape, model.dtype), lazy_zeros(shape, model.dtype)) for _ in range(layers)]
    return [(torch.zeros(shape, dtype=model.dtype, device=model.device),
             torch.zeros(shape, dtype=model.dtype, device=model.device)) for _ in range(layers)]


def num_kv_blocks(model, config: EngineConfig, max_model_len: int) -> int:
    """`config.num_kv_blocks` when set; else as many blocks as the memory budget holds (GPU:
    free memory after profiling; CPU: `kv_cache_gb`), but no more than `max_num_seqs` full
    sequences use."""
    if config.num_kv_blocks:
        return config.num_kv_blocks
    if model.device.type == "cuda":
        budget = gpu_kv_budget(model, config)
    else:
        budget = int(config.kv_cache_gb * 2**30)
    by_memory = budget // kv_block_bytes(model, config.block_size)
    by_need = config.max_num_seqs * -(-max_model_len // config.block_size)
    return max(1, min(by_memory, by_need))


def kv_budget_bytes(total: int, free: int, peak_step: int, util: float) -> int:
    """Bytes left for the KV cache: `util` of the device's memory, less what is in use now
    (`total - free`: weights, the CUDA context, other processes) and less the transient peak
    one step adds over the steady state (`peak_step`)."""
    return max(0, int(total * util) - (total - free) - peak_step)


@torch.inference_mode()
def gpu_kv_budget(model, config: EngineConfig) -> int:
    """Run the largest step once (one prefill chunk of `max_num_batched_tokens` tokens into a
    scratch cache, then the LM head on `max_num_seqs` rows) and measure its peak."""
    device = model.device
    tokens = config.max_num_batched_tokens
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    layers, kv_heads, dim = model.kv_shape
    scratch = [(torch.zeros(kv_heads, 1, tokens, dim, dtype=model.dtype, device=device),) * 2 for _ in range(layers)]
    meta = AttentionMetadata(slot_mapping=torch.arange(tokens, device=device), num_decode_tokens=0,
                             prefill_chunks=[PrefillChunk(rows=slice(0, tokens))])
    ids = torch.zeros(tokens, dtype=torch.long, device=device)
    hidden = model(ids, torch.arange(tokens, device=device) % model.config.max_position_embeddings, meta, scratch)
    model.compute_logits(hidden[:config.max_num_seqs]).float().log_softmax(-1)
    torch.cuda.synchronize(device)
    peak_step = torch.cuda.max_memory_allocated(device) - before
    del scratch, hidden
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    return kv_budget_bytes(total, free, peak_step, config.gpu_memory_utilization)
