"""AWQ on one decoder block: record what it sees, search scales, fold them, search clips.

The steps follow AutoAWQ's order so results are comparable: every mapping's scale is searched
on the *original* block and inputs, then all scales are folded, then the clip search runs on
the scaled weights with the recorded inputs divided by their scale, then each weight is
quantized. Searches score candidate tensors functionally (`torch.func.functional_call`, or
F.linear for a single inspected Linear); only `fold_block_scales` writes to the model.

MoE (Mixtral-style): the norm -> experts mapping shares one scale across every expert (one
norm feeds them all) and scores the whole MoE block, so each expert sees only the tokens the
router sends it; the router is scaled too (`extra_balance`) but never quantized. Per-expert
mappings (w3 -> w2) and clips use the expert's routed tokens; an expert that receives none
keeps s = 1 and plain RTN.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from qfid.errors import QfidError
from qfid.models.linears import WeightRef, block_module, block_weight
from qfid.models.mappings import ArchSpec
from qfid.quant.awq_search import (activation_means, chunk_rows, group_gram, search_clip, search_scale,
                                   weight_means)
from qfid.quant.block_capture import BlockBatch, run_block, sequence_kwargs
from qfid.quant.block_layout import BlockMapping
from qfid.layouts.primitives import Int4Weight, int4_quantize


@dataclass
class BlockActivations:
    """What one block saw on the calibration tokens."""

    inputs: dict[str, torch.Tensor]   # [tokens, width] per quantized Linear and inspected module
    search_batch: BlockBatch          # the sequences a sequence-level module (attention) is scored on
    search_tokens: int                # token budget when scoring token-wise modules


def gather_activations(block: nn.Module, refs: dict[str, WeightRef], mappings: list[BlockMapping],
                       batches: list[BlockBatch], search_tokens: int) -> tuple[BlockActivations, list[BlockBatch]]:
    """Run the block once, recording every Linear's and inspected module's input; fused MoE
    experts (no Linear to hook) get theirs from the router. Also returns the block's outputs,
    the next block's inputs (AutoAWQ feeds the fp block's outputs forward)."""
    record = {name: ref.module for name, ref in refs.items() if ref.expert is None}
    record.update({m.inspect: block_module(block, m.inspect) for m in mappings if m.inspect not in refs})
    next_batches, inputs = run_block(block, batches, record)
    for m in mappings:
        if m.extra_balance and any(refs[b].expert is not None for b in m.balance):
            inputs.update(_fused_expert_inputs(block, refs, m, inputs[m.inspect]))
    missing = [name for name in refs if name not in inputs]
    if missing:
        raise QfidError(f"no calibration inputs for {missing[0]}: fused MoE experts need a mapping "
                        "from the norm that feeds them, with the router as extra_balance")
    return BlockActivations(inputs, batches[0], search_tokens), next_batches


_EXPERT_ROLE = {"w1": "gate", "w3": "up", "w2": "down"}


def _fused_expert_inputs(block: nn.Module, refs: dict[str, WeightRef], m: BlockMapping,
                         x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Inputs of each fused expert's w1/w3 (its routed tokens) and w2 (act(w1 x) * w3 x)."""
    routed = _routed_tokens(block_module(block, m.inspect), block_module(block, m.extra_balance[0]), x)
    experts: dict[int, dict[str, str]] = {}
    for name, ref in refs.items():
        if ref.expert is not None:
            experts.setdefault(ref.expert, {})[_EXPERT_ROLE[name.rsplit(".", 1)[1]]] = name
    inputs = {}
    with torch.inference_mode():
        for e, names in experts.items():
            x_e = x[routed[e]]
            gate_ref = refs[names["gate"]]
            hidden = gate_ref.module.act_fn(F.linear(x_e, gate_ref.get())) * F.linear(x_e, refs[names["up"]].get())
            inputs.update({names["gate"]: x_e, names["up"]: x_e, names["down"]: hidden})
    return inputs


def _routed_tokens(moe: nn.Module, router: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Token indices each expert receives: the router's top-k (softmax keeps the order)."""
    top_k = getattr(moe, "top_k", None) or router.top_k
    with torch.inference_mode():
        logits = F.linear(x, router.weight, getattr(router, "bias", None))
        chosen = logits.topk(top_k, dim=-1).indices
    return [(chosen == e).any(dim=-1).nonzero().squeeze(1) for e in range(router.weight.shape[0])]


def scoring_dtype() -> torch.dtype:
    """The dtype scale candidates are scored in: bfloat16 where the CPU multiplies it natively
    (AVX512-BF16 / AMX: ~3x fp32's matmul rate, and the forward passes that score candidates
    are most of AWQ's time), else float32. Only the *comparison* of candidates runs in it;
    candidate weights are built and quantized in fp32. bf16 rounding (~0.4% of an output)
    is an order below INT4's error and adds about the same to every candidate's loss, so
    the ranking holds (bench/quantize.py's held-out perplexity is the check)."""
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return torch.bfloat16 if native else torch.float32


def search_block_scales(block: nn.Module, refs: dict[str, WeightRef], mappings: list[BlockMapping],
                        acts: BlockActivations, group_size: int, grid: int,
                        score_dtype: torch.dtype = torch.float32, min_tokens: int = 1) -> dict[str, torch.Tensor]:
    """Best scale per mapping, keyed by smooth layer. Reads the block, never writes it: with a
    `score_dtype` other than the block's, candidates are scored with cast copies of the
    inspected module's parameters. A mapping whose inspected input has fewer than `min_tokens` rows (a
    starved expert) keeps s = 1."""
    scales = {}
    scorer = _ScoringBlock(block, refs, score_dtype)
    for m in mappings:
        x = acts.inputs[m.inspect]
        weights = [refs[b].get() for b in m.balance]
        if x.shape[0] < min_tokens:
            scales[m.smooth] = torch.ones(weights[0].shape[1])
            continue
        loss = scorer.loss(m, acts)
        with torch.inference_mode():
            scales[m.smooth], _ = search_scale(activation_means(x), weight_means(weights, group_size),
                                               weights, group_size, grid, loss, score_dtype)
        del loss   # the mapping's cast parameters and targets
    return scales


class _ScoringBlock:
    """`loss(mapping, acts)` closures that score a mapping's candidates in `dtype`. The
    inspected module runs functionally on `dtype` tensors: the candidates for its balance
    weights and casts of its other parameters (made per mapping, dropped with the closure;
    none when they already are in `dtype`), so the block itself is never copied. Targets
    are computed once, in fp32."""

    def __init__(self, block: nn.Module, refs: dict[str, WeightRef], dtype: torch.dtype):
        self.dtype = dtype
        self.block, self.refs = block, refs

    def loss(self, m: BlockMapping, acts: BlockActivations):
        """loss(candidate balance weights) -> MSE of the inspected module's output against
        the unquantized output, both computed in `dtype`."""
        dtype = self.dtype
        if m.inspect in self.refs:
            ref, slot = self.refs[m.inspect], m.balance.index(m.inspect)
            x = token_sample(acts.inputs[m.inspect], acts.search_tokens).to(dtype)
            bias = None if ref.bias is None else ref.bias.to(dtype)
            with torch.inference_mode():
                target = F.linear(x, ref.get().to(dtype), bias).float()
            return lambda cands: _mse(F.linear(x, cands[slot].to(dtype), bias), target)
        module = block_module(self.block, m.inspect)
        balance = [self.refs[b] for b in m.balance]
        args, kwargs = _cast_floats(_inspect_call(module, acts, m.inspect), dtype)
        params = _candidate_params(module, balance, dtype)
        with torch.inference_mode():
            target = _first(functional_call(module, params([ref.get() for ref in balance]), args, kwargs)).float()
        return lambda cands: _mse(_first(functional_call(module, params(cands), args, kwargs)), target)


def _mse(out: torch.Tensor, target: torch.Tensor) -> float:
    """F.mse_loss(out.float(), target) with `out` upcast in row chunks (awq_search.chunk_rows:
    a whole 2048 x 4096 output upcast per grid point was a fresh mapping each time): with
    one chunk exactly that value; with several, each chunk's mean weighted by its size
    (a float32 times a small integer and divided back is exact in float64)."""
    out, target = out.reshape(-1, out.shape[-1]), target.reshape(-1, target.shape[-1])
    rows = chunk_rows(out.shape[-1])
    if out.shape[0] <= rows:
        return F.mse_loss(out.float(), target).item()
    total = sum(F.mse_loss(o.float(), t).item() * o.numel() for o, t in zip(out.split(rows), target.split(rows)))
    return total / out.numel()


def _cast_floats(value, dtype: torch.dtype):
    """`value` with every floating tensor inside (tuples, lists, dicts) cast to `dtype`."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(_cast_floats(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _cast_floats(v, dtype) for k, v in value.items()}
    return value


def _inspect_call(module: nn.Module, acts: BlockActivations, name: str) -> tuple[tuple, dict]:
    """Arguments to score `module` on: whole search sequences with the block's kwargs when it
    needs them (attention), otherwise an evenly spread sample of tokens from every sequence."""
    kwargs = sequence_kwargs(module, acts.search_batch.kwargs)
    x = acts.inputs[name]
    if kwargs:
        batch, seq_len = acts.search_batch.hidden.shape[:2]
        return (x[: batch * seq_len].reshape(batch, seq_len, -1),), kwargs
    return (token_sample(x, acts.search_tokens).unsqueeze(0),), kwargs


def token_sample(x: torch.Tensor, budget: int) -> torch.Tensor:
    """At most about `budget` rows of x, evenly strided (deterministic)."""
    return x[:: max(1, x.shape[0] // budget)]


def _candidate_params(module: nn.Module, refs: list[WeightRef], dtype: torch.dtype):
    """cands -> {name under `module`: tensor} for functional_call, everything in `dtype`:
    each balance weight replaced by its candidate (a fused expert parameter is cast once per
    candidate and its slices overwritten), every other floating parameter and buffer by
    its `dtype` cast, made here once."""
    paths = {id(sub): path for path, sub in module.named_modules()}
    keys = []
    for ref in refs:
        if id(ref.module) not in paths:
            raise QfidError(f"AWQ mapping scores {type(module).__name__} but {ref.name} is not inside it")
        keys.append(".".join(p for p in (paths[id(ref.module)], ref.param) if p))
    replaced = {key for key, ref in zip(keys, refs) if ref.expert is None}
    fixed = {name: t.detach().to(dtype) for name, t in [*module.named_parameters(), *module.named_buffers()]
             if t.is_floating_point() and t.dtype != dtype and name not in replaced}

    def build(cands: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        params = dict(fixed)
        for ref, key, cand in zip(refs, keys, cands):
            if ref.expert is None:
                params[key] = cand.to(dtype)
                continue
            if key not in params or params[key] is fixed.get(key):
                params[key] = getattr(ref.module, ref.param).detach().to(dtype, copy=True)
            ref.view_of(params[key]).copy_(cand)
        return params

    return build


def _first(out):
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def fold_block_scales(block: nn.Module, mappings: list[BlockMapping], scales: dict[str, torch.Tensor]) -> None:
    """Fold each scale: balance (and router) columns * s, smooth outputs / s. The block then
    computes the same function with flatter input channels for its quantized layers."""
    for m in mappings:
        s = scales[m.smooth]
        for name in m.balance:
            ref = block_weight(block, name)
            ref.set(ref.get() * s)
        for name in m.extra_balance:
            router = block_module(block, name)
            router.weight.copy_(router.weight * s)
        _divide_smooth(block, m.smooth, s)


def _divide_smooth(block: nn.Module, name: str, s: torch.Tensor) -> None:
    module = _module_or_none(block, name)
    if module is None or isinstance(module, nn.Linear):
        ref = block_weight(block, name)
        ref.set(ref.get() / s.unsqueeze(1))
        if ref.bias is not None:
            ref.bias.copy_(ref.bias / s)
        return
    module.weight.copy_(module.weight / s)   # a norm: its weight scales each output channel
    if getattr(module, "bias", None) is not None:
        module.bias.copy_(module.bias / s)


def _module_or_none(block: nn.Module, name: str) -> nn.Module | None:
    try:
        return block_module(block, name)
    except QfidError:
        return None


def clip_grams(acts: BlockActivations, refs: dict[str, WeightRef], mappings: list[BlockMapping],
               scales: dict[str, torch.Tensor], spec: ArchSpec, group_size: int,
               min_tokens: int = 1) -> dict[str, torch.Tensor]:
    """The per-group input Gram (`group_gram`) of every Linear the clip search covers, in the
    folded basis (x / s for balance layers): all it needs of the inputs. Skips q/k
    (`spec.clip_skip`: clipping them hurts attention scores) and Linears that received fewer
    than `min_tokens` tokens (starved experts).

    Consumes `acts`: the recorded inputs are divided by their scale in place (the same
    bits as x / s) and dropped once their Gram is taken, so the block's largest buffers
    (0.9 GB on an 8B block) are gone before the clip loops allocate theirs."""
    owner: dict[int, str] = {}   # recorded tensor -> the mapping whose scale divided it
    with torch.inference_mode():
        for m in mappings:
            for name in m.balance:
                x = acts.inputs[name]
                if id(x) not in owner:
                    owner[id(x)] = m.smooth
                    x.div_(scales[m.smooth])
                elif owner[id(x)] != m.smooth:
                    raise QfidError(f"{name}'s recorded input feeds two AWQ mappings ({owner[id(x)]}, {m.smooth})")
        grams, by_tensor = {}, {}
        for name in refs:
            x = acts.inputs[name]
            if name in spec.clip_skip or x.shape[0] < min_tokens:
                continue
            if id(x) not in by_tensor:
                by_tensor[id(x)] = group_gram(x, group_size, chunk_rows(x.shape[1]))
            grams[name] = by_tensor[id(x)]
    acts.inputs.clear()
    return grams


def search_block_clips(refs: dict[str, WeightRef], grams: dict[str, torch.Tensor], group_size: int) -> dict[str, torch.Tensor]:
    """Clip values for each Linear that has a Gram (see `clip_grams`)."""
    with torch.inference_mode():
        return {name: search_clip(refs[name].get(), gram, group_size) for name, gram in grams.items()}


def quantize_block_linears(refs: dict[str, WeightRef], clips: dict[str, torch.Tensor],
                           group_size: int) -> dict[str, Int4Weight]:
    return {name: _int4_quantize_rows(ref.get(), group_size, clips.get(name)) for name, ref in refs.items()}


def _int4_quantize_rows(w: torch.Tensor, group_size: int, clip: torch.Tensor | None) -> Int4Weight:
    """`int4_quantize` a chunk of rows at a time (rows are independent: the same result): its
    half-dozen fp32 temporaries of the weight's size were 1.2 GB on an 8B's MLP weights."""
    rows = chunk_rows(w.shape[1])
    if w.shape[0] <= rows:
        return int4_quantize(w, group_size, clip)
    parts = [int4_quantize(w[i:i + rows], group_size, None if clip is None else clip[i:i + rows])
             for i in range(0, w.shape[0], rows)]
    return Int4Weight(torch.cat([p.codes for p in parts]), torch.cat([p.scales for p in parts]),
                      torch.cat([p.zeros for p in parts]), group_size)
