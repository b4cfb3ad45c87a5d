"""Architecture knowledge as data, keyed by the HF `architectures[0]` class name.

For each supported family: where the decoder blocks live, which Linear layers of a block are
quantized, and AWQ's (smooth layer -> balanced layers) mappings with the module whose output
the scale search scores. Names are relative to one decoder block and use the *checkpoint*
names (what `save_pretrained` writes), so the same data serves the quantizer, the savers
and the runtime. `{e}` stands for an expert index in MoE blocks.

Nothing here branches on model classes: adding a Llama-like architecture is one entry.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from qfid.errors import QfidError


@dataclass(frozen=True)
class AwqMapping:
    """Scale `balance` layers' input channels by s and fold 1/s into `smooth` (a norm or a
    Linear). `inspect` is the module whose output MSE the search minimises. When
    `requires_same_shape` is set the mapping is skipped unless smooth's output width equals
    every balance layer's input width and the two have the same number of rows (v -> o
    under GQA is skipped, as in AutoAWQ). `extra_balance` are Linear layers that read the
    same input but are not quantized (an MoE router): they get the scale too, so the block
    computes the same function."""

    smooth: str
    balance: tuple[str, ...]
    inspect: str
    requires_same_shape: bool = False
    extra_balance: tuple[str, ...] = ()


@dataclass(frozen=True)
class RuntimeNames:
    """Where the runtime forward finds each part of a decoder block (checkpoint names,
    resolved through `models.linears.block_module`). A dense MLP has `gate_up` and `down`;
    an MoE block has `moe` (its router and experts) instead."""

    qkv: tuple[str, str, str] = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
    o: str = "self_attn.o_proj"
    input_norm: str = "input_layernorm"
    post_attention_norm: str = "post_attention_layernorm"
    gate_up: tuple[str, str] = ("mlp.gate_proj", "mlp.up_proj")
    down: str = "mlp.down_proj"
    moe: str | None = None


@dataclass(frozen=True)
class ArchSpec:
    family: str
    blocks: str                      # attribute path of the ModuleList of decoder blocks
    linears: tuple[str, ...]         # quantized Linear layers of one block
    awq: tuple[AwqMapping, ...]
    moe: bool = False
    keep_full_precision: tuple[str, ...] = field(default=("lm_head",))
    clip_skip: tuple[str, ...] = ("self_attn.q_proj", "self_attn.k_proj")
    # Outside the blocks, by module path: what a streamed pass materializes on its own.
    embed: str = "model.embed_tokens"
    rotary: str = "model.rotary_emb"
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    runtime: RuntimeNames = RuntimeNames()


_ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
_ATTN_AWQ = (
    AwqMapping("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn"),
    AwqMapping("self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj", requires_same_shape=True),
)

LLAMA = ArchSpec(
    family="llama",
    blocks="model.layers",
    linears=_ATTN + ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
    awq=_ATTN_AWQ + (
        AwqMapping("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp"),
        AwqMapping("mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj"),
    ),
)

MIXTRAL = ArchSpec(
    family="mixtral",
    blocks="model.layers",
    linears=_ATTN + (
        "block_sparse_moe.experts.{e}.w1",
        "block_sparse_moe.experts.{e}.w3",
        "block_sparse_moe.experts.{e}.w2",
    ),
    awq=_ATTN_AWQ + (
        AwqMapping(
            "post_attention_layernorm",
            ("block_sparse_moe.experts.{e}.w1", "block_sparse_moe.experts.{e}.w3"),
            "block_sparse_moe",
            extra_balance=("block_sparse_moe.gate",),
        ),
        AwqMapping("block_sparse_moe.experts.{e}.w3", ("block_sparse_moe.experts.{e}.w2",), "block_sparse_moe.experts.{e}.w2"),
    ),
    moe=True,
    keep_full_precision=("lm_head", "block_sparse_moe.gate"),
    runtime=RuntimeNames(gate_up=(), down="", moe="block_sparse_moe"),
)

ARCHITECTURES: dict[str, ArchSpec] = {
    "LlamaForCausalLM": LLAMA,
    "MistralForCausalLM": LLAMA,
    "Qwen2ForCausalLM": LLAMA,
    "MixtralForCausalLM": MIXTRAL,
}


def arch_spec(architecture: str | None) -> ArchSpec:
    """The spec for an HF architecture name, or a one-line error listing what is supported."""
    spec = ARCHITECTURES.get(architecture or "")
    if spec is None:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise QfidError(f"unsupported architecture {architecture!r}; qfid supports {supported}")
    return spec
