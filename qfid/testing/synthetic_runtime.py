"""Random-weight Llama models built straight in device memory, for runtime benchmarks at
the sizes users serve (a Llama-3-8B in bf16 is 16 GB: writing and reading it as a
checkpoint would cost more of a short GPU lease than the measurement). The model is
created on the meta device and materialised on the target device, its weights drawn there;
`int4_group_size` replaces every decoder Linear by an RTN `Int4Linear` (AutoAWQ GEMM
layout), the layer a quantized checkpoint loads into. Tokens only: the engine gets a
tokenizer stand-in that decodes to empty text.
"""
from __future__ import annotations

import torch
from torch import nn

from qfid.testing.synthetic import NORM_NOISE, WEIGHT_STD


class IdsOnlyTokenizer:
    """What the engine's detokenizer calls, for workloads given as token ids."""

    eos_token_id = None

    def decode(self, token_ids, skip_special_tokens: bool = True) -> str:
        return ""


def llama_config(*, layers: int, hidden: int = 4096, intermediate: int = 14336, heads: int = 32, kv_heads: int = 8,
                 vocab: int = 128256, max_positions: int = 8192):
    """Llama-3's config at these widths (Llama-3-8B's by default)."""
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
                         max_position_embeddings=max_positions, rope_theta=500000.0, rms_norm_eps=1e-5)
    config.architectures = ["LlamaForCausalLM"]
    return config


@torch.no_grad()
def random_hf_llama(config, dtype: torch.dtype, device: torch.device | str, seed: int = 0,
                    int4_group_size: int | None = None) -> nn.Module:
    """A transformers Llama with random weights drawn on `device` (matrices N(0, 0.02), norms
    1 + small noise), optionally with RTN INT4 decoder Linears."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    for parameter in model.parameters():
        if parameter.dim() == 1:
            parameter.normal_(1.0, NORM_NOISE, generator=generator)
        else:
            parameter.normal_(0.0, WEIGHT_STD, generator=generator)
    if int4_group_size:
        _quantize_decoder_linears(model, int4_group_size)
    return model.eval()


def _quantize_decoder_linears(model: nn.Module, group_size: int) -> None:
    from qfid.layouts.primitives import int4_quantize
    from qfid.quant.linear import Int4Linear

    for block in model.model.layers:
        for name, module in list(block.named_modules()):
            if type(module) is nn.Linear:
                q = int4_quantize(module.weight.float(), group_size)
                parent_name, _, attr = name.rpartition(".")
                setattr(block.get_submodule(parent_name) if parent_name else block, attr,
                        Int4Linear.from_int4(q, module.bias))


def random_engine(config, dtype: torch.dtype, device: torch.device | str, int4_group_size: int | None = None,
                  seed: int = 0, **engine_options):
    """An LLMEngine over a random model on `device` (EngineConfig fields as keywords)."""
    from qfid.engine.config import EngineConfig
    from qfid.engine.llm_engine import LLMEngine
    from qfid.layers.model import build_runtime_model
    from qfid.models.placement import dtype_name

    hf_model = random_hf_llama(config, dtype, device, seed, int4_group_size)
    runtime = build_runtime_model(hf_model, engine_options.pop("attention", None))
    engine_config = EngineConfig(device=str(device), dtype=dtype_name(dtype), **engine_options)
    return LLMEngine(runtime, IdsOnlyTokenizer(), engine_config, frozenset())
