"""Mixtral-style sparse MoE for the runtime: a softmax router picks the top-k experts per
token, their weights are renormalised to sum to one, and each expert is a SwiGLU MLP.

transformers 5 stores the experts fused (`gate_up_proj` [E, 2I, H], `down_proj` [E, H, I])
and the router as `gate.weight` [E, H]. The expert loop runs over *experts*, not tokens:
tokens are grouped by the expert they chose, each expert does one matmul over its group,
and results are added back in expert order as transformers does, so the sums agree bit
for bit (`index_put_(accumulate=True)` rather than `index_add_`, whose thread fan-out costs
milliseconds per call on a busy CPU; a token meets each expert at most once, so the two are
the same sum). If a quantizer replaced the fused experts with its own module, that
module is called with transformers' (hidden, top_k_index, top_k_weights) signature.

On a GPU the expert loop above would read the chosen expert ids back to the host (a sync
in every layer of every step), so there every expert runs over every token and tokens
that did not choose it weigh it by zero: E/k times the expert FLOPs (4x for Mixtral), no
sync, sums in a different order than transformers' (equal within fp32 rounding, not bit
for bit). A grouped-GEMM kernel over tokens sorted by expert is the fix that keeps both.

`record_routing(model)` switches on a per-layer log of the experts each token was sent to,
which the engine eval backend reads for expert-routing agreement (qfid/evals/backends/
engine_routing.py) without the runtime having to know about evals.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F


class SparseMoE(nn.Module):
    def __init__(self, hf_block: nn.Module, config):
        super().__init__()
        self.router_weight = hf_block.gate.weight
        self.experts = hf_block.experts
        self.top_k = config.num_experts_per_tok
        self.fused = isinstance(getattr(self.experts, "gate_up_proj", None), torch.Tensor)
        self.routing_log: list[torch.Tensor] | None = None  # set by `record_routing`

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights [T, k], fp32 as in transformers, expert ids [T, k])."""
        probs = F.linear(x, self.router_weight).float().softmax(dim=-1)
        weights, experts = probs.topk(self.top_k, dim=-1)
        return weights / weights.sum(dim=-1, keepdim=True), experts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, experts = self.route(x)
        if self.routing_log is not None:
            self.routing_log.append(experts)
        if not self.fused:
            return self.experts(x, experts, weights)
        if x.device.type == "cuda":
            return self._all_experts(x, weights, experts)
        out = torch.zeros_like(x)
        for expert in experts.unique().tolist():
            token_rows, slot = torch.where(experts == expert)
            gate, up = F.linear(x[token_rows], self.experts.gate_up_proj[expert]).chunk(2, dim=-1)
            y = F.linear(F.silu(gate) * up, self.experts.down_proj[expert])
            out.index_put_((token_rows,), (y * weights[token_rows, slot, None]).to(out.dtype), accumulate=True)
        return out


    def _all_experts(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """Every expert over every token, weighted by the routing weight (0 if not chosen)."""
        dense = torch.zeros(x.shape[0], self.experts.gate_up_proj.shape[0], dtype=weights.dtype, device=x.device)
        dense.scatter_(1, experts, weights)
        out = torch.zeros_like(x)
        for expert in range(dense.shape[1]):
            gate, up = F.linear(x, self.experts.gate_up_proj[expert]).chunk(2, dim=-1)
            y = F.linear(F.silu(gate) * up, self.experts.down_proj[expert])
            out += (y * dense[:, expert, None]).to(out.dtype)
        return out


def moe_layers(model: nn.Module) -> list[SparseMoE]:
    """The model's SparseMoE blocks in model order (none for a dense model)."""
    return [module for module in model.modules() if isinstance(module, SparseMoE)]


@contextmanager
def record_routing(model: nn.Module) -> Iterator[list[list[torch.Tensor]]]:
    """While the block runs, every SparseMoE of `model` appends the expert ids [T, k] of each
    forward to its own list (the lists yielded, model order); logging stops on leaving, also
    on an error, so a long-lived engine never keeps growing a forgotten log."""
    layers = moe_layers(model)
    logs: list[list[torch.Tensor]] = [[] for _ in layers]
    for layer, log in zip(layers, logs):
        layer.routing_log = log
    try:
        yield logs
    finally:
        for layer in layers:
            layer.routing_log = None
