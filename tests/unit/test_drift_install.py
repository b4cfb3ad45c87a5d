"""The drift pass's quantized block computes what the torch reference kernel computes.

`pipeline._install_quantized` puts FP8 layers into the block as dequantized fp32 weights
with E4M3 activation rounding on the way in (no FP8 GEMM for thousands of fp32 rows); the
same block with `Fp8Linear` modules under `QFID_KERNEL=reference` (dequantize + F.linear
per call, the function every FP8 kernel is checked against) must give the same outputs
bit for bit, for per-channel dynamic and per-tensor static FP8."""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from qfid.layouts.primitives import FP8_E4M3_MAX, fp8_quantize
from qfid.quant.linear import Fp8Linear
from qfid.quant.pipeline import _install_quantized
from qfid.quant.schemes import BlockOutcome

LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def _block(seed: int):
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                         num_hidden_layers=1, vocab_size=100)
    block = LlamaDecoderLayer(config, 0).eval()
    for p in block.parameters():
        p.data.normal_(0, 0.2)
    return block, LlamaRotaryEmbedding(config)


@pytest.mark.parametrize("per_channel,static", [(True, False), (False, True)])
def test_installed_fp8_block_equals_the_reference_kernel_bit_for_bit(per_channel, static, monkeypatch):
    block, rope = _block(seed=3 + static)
    x = torch.randn(2, 9, 64)
    position_embeddings = rope(x, torch.arange(9).unsqueeze(0))
    quantized = {}
    for name in LINEARS:
        q = fp8_quantize(block.get_submodule(name).weight, per_channel)
        if static:
            q.input_scale = torch.tensor([1.7 / FP8_E4M3_MAX])
        quantized[name] = q
    reference = copy.deepcopy(block)
    for name, q in quantized.items():
        reference.set_submodule(name, Fp8Linear.from_fp8(q))
    _install_quantized(block, BlockOutcome(dict(quantized)))
    monkeypatch.setenv("QFID_KERNEL", "reference")
    with torch.no_grad():
        expected = reference(x, position_embeddings=position_embeddings)
        got = block(x, position_embeddings=position_embeddings)
    expected, got = (t[0] if isinstance(t, tuple) else t for t in (expected, got))
    assert torch.equal(got, expected)
    unrounded = copy.deepcopy(block)
    for name in LINEARS:
        unrounded.get_submodule(name)._forward_pre_hooks.clear()
    with torch.no_grad():
        plain = unrounded(x, position_embeddings=position_embeddings)
    assert not torch.equal(plain[0] if isinstance(plain, tuple) else plain, got)   # the rounding is there
