"""A model that is never whole in memory: its HF module tree on the meta device, one decoder
block materialized at a time from the checkpoint.

Quantizing a 70B on one GPU, or an 8B in 24 GB of RAM, needs about one block resident at a
time. The HF model is built on the meta device (no memory), so its own code still computes
what every block receives (rotary embeddings, the causal mask) and its blocks are the real
transformers modules; only the rotary module is rebuilt for real, and the embedding lookup is
done here from the stored weight (in its stored dtype, read once). A block is filled from
the checkpoint in fp32 on the compute device when its turn comes and returned to meta after.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from qfid.errors import QfidError
from qfid.models.checkpoint_source import CheckpointSource
from qfid.models.linears import block_tensor, decoder_blocks
from qfid.models.mappings import ArchSpec

COMPUTE_DTYPE = torch.float32   # what a block is searched and run in (stored bf16/fp16 upcast exactly)


class ModelShell:
    """The model's structure, its embedding, and `load_block(i)` / `release_block(i)`."""

    def __init__(self, model_dir: Path, spec: ArchSpec, source: CheckpointSource, device: torch.device,
                 trust_remote_code: bool = False):
        from transformers import AutoConfig, AutoModelForCausalLM

        self.spec, self.source, self.device = spec, source, torch.device(device)
        self.config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            self.model = AutoModelForCausalLM.from_config(self.config, dtype=COMPUTE_DTYPE,
                                                          trust_remote_code=trust_remote_code).eval()
        rotary = self.model.get_submodule(spec.rotary)
        self.model.set_submodule(spec.rotary, type(rotary)(config=self.config).to(self.device))
        self.blocks = decoder_blocks(self.model, spec)
        self._embedding: torch.Tensor | None = None

    @property
    def tied(self) -> bool:
        return f"{self.spec.lm_head}.weight" not in self.source.specs

    def block_prefix(self, i: int) -> str:
        return f"{self.spec.blocks}.{i}."

    def block_names(self, i: int) -> list[str]:
        return self.source.with_prefix(self.block_prefix(i))

    def outside_names(self) -> list[str]:
        """Checkpoint tensors that belong to no decoder block (embeddings, final norm, head)."""
        return [n for n in self.source.names if not n.startswith(f"{self.spec.blocks}.")]

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """fp32 hidden states for token ids; the table stays in its stored dtype (upcasting a
        looked-up row is exact, so this equals an fp32 model's lookup)."""
        if self._embedding is None:
            name = f"{self.spec.embed}.weight"
            self._embedding = self.source.read([name])[name].to(self.device)
        return F.embedding(ids.to(self.device), self._embedding).to(COMPUTE_DTYPE)

    def release_embedding(self) -> None:
        """Drop the embedding table once every stream has been embedded (on an 8B it is
        1 GB that no block needs); a tied LM head reads it again at the end."""
        self._embedding = None

    def load_block(self, i: int) -> nn.Module:
        """Block i with the checkpoint's weights, in fp32 on the compute device. Every
        parameter must be filled: it starts as NaN, so a tensor missing from the files is
        caught instead of running on uninitialized memory."""
        block = self.blocks[i].to_empty(device=self.device)
        with torch.no_grad():
            for tensor in list(block.parameters()) + [b for b in block.buffers() if b.is_floating_point()]:
                tensor.fill_(float("nan"))
            prefix = self.block_prefix(i)
            self.source.copy_into({name: block_tensor(block, name[len(prefix):]).get() for name in self.block_names(i)})
        for name, param in block.named_parameters():
            if torch.isnan(param).any():
                raise QfidError(f"checkpoint holds no value for {prefix}{name} (or it is NaN)")
        return block

    def release_block(self, i: int) -> None:
        self.blocks[i].to("meta")

    def head_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(final norm weight fp32, LM head weight in its stored dtype) on the device; the
        head is the embedding table when they are tied."""
        norm_name = f"{self.spec.final_norm}.weight"
        norm = self.source.read([norm_name], COMPUTE_DTYPE)[norm_name].to(self.device)
        if self.tied:
            return norm, self.embed_table()
        head_name = f"{self.spec.lm_head}.weight"
        return norm, self.source.read([head_name])[head_name].to(self.device)

    def embed_table(self) -> torch.Tensor:
        if self._embedding is None:
            self.embed(torch.zeros(1, dtype=torch.long))
        return self._embedding

    def final_norm(self, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The model's own final norm module run with `weight` (materialized for the call)."""
        norm = self.model.get_submodule(self.spec.final_norm).to_empty(device=self.device)
        with torch.no_grad():
            norm.weight.copy_(weight)
            out = norm(hidden)
        norm.to("meta")
        return out
