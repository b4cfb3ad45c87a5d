"""Expert routing from the qfid runtime model, for the engine backend, in a teacher-forced
pass of its own.

Why a pass of its own rather than listening in on the scoring steps: the engine never runs a
request whole. Prefix caching skips the context another request already computed (the two
scoring waves exist to make that happen), chunked prefill splits a prompt over steps, and a
step's flat rows mix several sequences in an order only the scheduler knows. Mapping rows
back to (request, position) would need the engine's internals, and the cached positions
would still be missing. So each request's tokens run once more, whole, through the same
runtime model (`CausalLM`, quantized layers and all), several requests per flat batch as
fresh prefill chunks with no cached context, while `record_routing` logs what every
SparseMoE chose. The pass writes K/V into a scratch cache of its own, so the engine's
cache and its prefix-cache contents are untouched. It costs one more forward over each
item's gold request (MoE models only).
"""
from __future__ import annotations

import itertools

import torch

from qfid.evals.backends.base import ExpertRouting
from qfid.layers.moe import moe_layers, record_routing


def runtime_expert_routing(model, rows: list[list[int]], max_batch_tokens: int) -> list[ExpertRouting] | None:
    """Each row's routing (None for a dense model), batches of at most `max_batch_tokens`
    tokens (a longer row runs alone)."""
    if not moe_layers(model):
        return None
    results: list[ExpertRouting] = []
    for batch in _token_batches(rows, max_batch_tokens):
        results += _route_batch(model, batch)
    return results


def _token_batches(rows: list[list[int]], max_tokens: int) -> list[list[list[int]]]:
    """Consecutive rows grouped while their total stays within `max_tokens`."""
    batches: list[list[list[int]]] = []
    size = 0
    for row in rows:
        if not batches or size + len(row) > max_tokens:
            batches.append([])
            size = 0
        batches[-1].append(row)
        size += len(row)
    return batches


def _route_batch(model, rows: list[list[int]]) -> list[ExpertRouting]:
    lengths = [len(row) for row in rows]
    starts = [0, *itertools.accumulate(lengths)][:-1]
    device = model.embed_tokens.weight.device
    input_ids = torch.tensor([token for row in rows for token in row], device=device)
    positions = torch.cat([torch.arange(n) for n in lengths]).to(device)
    with torch.inference_mode(), record_routing(model) as logs:
        model(input_ids, positions, _prefill_metadata(starts, lengths, device), _scratch_cache(model, sum(lengths), device))
    layers = [torch.cat(log).cpu() for log in logs]  # each [tokens, k]
    k = layers[0].shape[1]
    return [ExpertRouting(ids=[layer[s:s + n].flatten().tolist() for layer in layers], k=k) for s, n in zip(starts, lengths)]


def _prefill_metadata(starts: list[int], lengths: list[int], device):
    """Every row a prefill chunk from position 0 (no cached context: causal attention over its
    own tokens), K/V stored at slots 0..T-1 of the scratch cache."""
    from qfid.layers.attention import AttentionMetadata, PrefillChunk

    chunks = [PrefillChunk(rows=slice(s, s + n)) for s, n in zip(starts, lengths)]
    return AttentionMetadata(slot_mapping=torch.arange(sum(lengths), device=device), num_decode_tokens=0, prefill_chunks=chunks)


def _scratch_cache(model, tokens: int, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer a (K, V) cache of one block holding `tokens` slots, in the runtime's
    [kv_heads, blocks, block_size, head_dim] layout."""
    layers, kv_heads, dim = model.kv_shape
    shape = (kv_heads, 1, tokens, dim)
    return [(torch.zeros(shape, dtype=model.dtype, device=device), torch.zeros(shape, dtype=model.dtype, device=device))
            for _ in range(layers)]
