"""Rotary position embeddings: the inverse frequencies of a config (default and Llama 3.1
scaling), cos/sin tables for every position, and the rotate-half application."""
from __future__ import annotations

import math

import torch
from torch import nn

from qfid.errors import QfidError


def rope_inv_freq(config) -> torch.Tensor:
    """Inverse frequencies from `config.rope_parameters` (transformers 5) or the older
    `rope_theta` / `rope_scaling` attributes; 'default' and 'llama3' scaling."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    dim = int(head_dim(config) * params.get("partial_rotary_factor", 1.0))
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind == "llama3":
        return _llama3_scaled(inv_freq, params)
    raise QfidError(f"RoPE scaling {kind!r} is not supported by the qfid runtime (default and llama3 are)")


def _llama3_scaled(inv_freq: torch.Tensor, params: dict) -> torch.Tensor:
    """Llama 3.1: long wavelengths divided by `factor`, short ones kept, a smooth ramp between."""
    factor, low, high = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
    old_context = params["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_context / high) * ~(wavelen > old_context / low)
    return torch.where(medium, smoothed, scaled)


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


class Rotary(nn.Module):
    """cos/sin tables for every position, computed once in fp32 on the CPU as transformers
    does and cast to the model dtype; buffers, so they move with the model. `tables` picks
    one step's rows, shared by every layer."""

    def __init__(self, config, dtype: torch.dtype, device: torch.device | str = "cpu"):
        super().__init__()
        positions = torch.arange(config.max_position_embeddings, dtype=torch.float32)
        freqs = positions[:, None] * rope_inv_freq(config)[None, :]
        self.register_buffer("cos", freqs.cos().to(dtype).to(device), persistent=False)
        self.register_buffer("sin", freqs.sin().to(dtype).to(device), persistent=False)

    def tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[T, d/2] cos and sin for these positions."""
        return self.cos[positions], self.sin[positions]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cpu_ops: bool) -> torch.Tensor:
    """Rotate-half RoPE of x [T, heads, d]; `cpu_ops` rotates in place in one fused CPU op."""
    if cpu_ops:
        return torch.ops.qfid_cpu.rotary_(x, cos, sin)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    first, second = x.chunk(2, dim=-1)
    return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)
