"""Which layers a quantized model should keep in higher precision: each fused unit's
sensitivity, measured directly.

A unit's sensitivity is the mean KL(fp || candidate) of the final next-token distributions
on calibration tokens when that unit alone carries its quantized weights and every other
layer stays at full precision (the definition issue 16 asks for; no proxy). The quantized
weights are the base checkpoint's own, so the measure is about exactly the scheme the sweep
ships: INT4 codes dequantized, and for AWQ the folded scales undone with the saved search
artifact (`effective_weights`), since a checkpoint's layer holds Q(W x s) and its norm 1/s.

Cost: one fp forward that records every block's input, then per unit the forward from its
block on (the blocks before it are unchanged), in fp32 on the CPU with the model loaded
whole: this suits models that fit in memory (the default model: 120 units in about two
minutes); a streamed measure for 8B+ is not built yet.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from qfid.models.loading import load_dense_model, model_arch, read_config
from qfid.models.mappings import ArchSpec
from qfid.quant.keep import model_units

TOKEN_CHUNK = 256


@dataclass
class UnitScore:
    unit: tuple[str, ...]   # full checkpoint names of the Linears fused into one matmul
    kl: float               # mean KL(fp || unit quantized) per token, nats


def effective_weights(checkpoint: Path, spec: ArchSpec) -> dict[str, torch.Tensor]:
    """Each quantized Linear's weight as the fp model would hold it: the stored weight
    dequantized in fp32, with AWQ's folded scales undone (balance columns / s; a Linear
    that is a mapping's smooth layer: rows * s)."""
    from qfid.quant.artifact import read_awq_artifact
    from qfid.quant.awq import scale_key
    from qfid.quant.checkpoint_reader import decode_checkpoint

    config = read_config(checkpoint)
    weights = {name: stored.dequantize(torch.float32)
               for name, stored in decode_checkpoint(checkpoint, config["quantization_config"]).items()}
    artifact = read_awq_artifact(checkpoint) if (checkpoint / "qfid").is_dir() else {}
    for i in range(config["num_hidden_layers"]):
        prefix = f"{spec.blocks}.{i}"
        for mapping in spec.awq:
            s = artifact.get(scale_key(f"{prefix}.{mapping.smooth}"))
            if s is None:
                continue
            for name in (f"{prefix}.{b}" for b in mapping.balance):
                if name in weights:
                    weights[name] = weights[name] / s[None, :]
            smooth = f"{prefix}.{mapping.smooth}"
            if smooth in weights:
                weights[smooth] = weights[smooth] * s[:, None]
    return weights


def measure_sensitivity(source: Path, checkpoint: Path, ids: torch.LongTensor) -> list[UnitScore]:
    """Every fused unit's sensitivity on token windows `ids` [n, L], most sensitive first."""
    spec = model_arch(read_config(source))
    model, _ = load_dense_model(source, dtype=torch.float32)
    quantized = effective_weights(checkpoint, spec)
    units = [u for u in model_units(spec, model.config.num_hidden_layers) if all(n in quantized for n in u)]
    with torch.no_grad():
        run = _BlockRun(model, spec, ids)
        scores = [UnitScore(unit, run.kl_with(unit, quantized)) for unit in units]
    return sorted(scores, key=lambda s: s.kl, reverse=True)


class _BlockRun:
    """The fp pass's per-block inputs and final log-probabilities, and forwards that start
    at a given block."""

    def __init__(self, model, spec: ArchSpec, ids: torch.LongTensor) -> None:
        self.model, self.spec = model, spec
        self.blocks = model.get_submodule(spec.blocks)
        self.inputs: list[torch.Tensor] = []
        self.kwargs: dict = {}
        hooks = [block.register_forward_pre_hook(self._record, with_kwargs=True) for block in self.blocks]
        try:
            hidden = model.model(input_ids=ids).last_hidden_state
        finally:
            for hook in hooks:
                hook.remove()
        self.reference = self._log_probs(hidden)
        self.reference_probs = self.reference.exp()   # once, not per unit: [tokens, vocab]

    def _record(self, _module, args, kwargs):
        self.inputs.append(args[0] if args else kwargs["hidden_states"])
        if not self.kwargs:
            self.kwargs = {k: v for k, v in kwargs.items() if k != "hidden_states"}

    def _log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """[tokens, vocab] fp32 log-softmax of the head over final-normed `hidden` (the model's
        own final norm has already run: last_hidden_state is normed)."""
        flat = hidden.reshape(-1, hidden.shape[-1])
        head = self.model.get_output_embeddings()
        return torch.cat([head(flat[i:i + TOKEN_CHUNK]).float().log_softmax(-1)
                          for i in range(0, flat.shape[0], TOKEN_CHUNK)])

    def kl_with(self, unit: tuple[str, ...], quantized: dict[str, torch.Tensor]) -> float:
        first = int(unit[0][len(self.spec.blocks) + 1:].split(".", 1)[0])
        saved = {name: self.model.get_submodule(name).weight.data for name in unit}
        for name in unit:
            self.model.get_submodule(name).weight.data = quantized[name]
        try:
            hidden = self.inputs[first]
            for block in self.blocks[first:]:
                out = block(hidden, **self.kwargs)
                hidden = out[0] if isinstance(out, tuple) else out
            hidden = self.model.get_submodule(self.spec.final_norm)(hidden)
        finally:
            for name, weight in saved.items():
                self.model.get_submodule(name).weight.data = weight
        return _mean_kl(self.reference, self._log_probs(hidden), self.reference_probs)


def _mean_kl(reference: torch.Tensor, candidate: torch.Tensor, reference_probs: torch.Tensor | None = None) -> float:
    """Mean over tokens of KL(p_ref || p_cand) from log-probabilities [tokens, vocab]."""
    probs = reference.exp() if reference_probs is None else reference_probs
    return float((probs * (reference - candidate)).sum(-1).mean())


def ranking_record(scores: list[UnitScore]) -> list[dict]:
    """What qfid_quant.json and the sweep report hold: units in rank order with their KL."""
    return [{"rank": i + 1, "unit": list(s.unit), "kl": s.kl} for i, s in enumerate(scores)]


def load_or_measure(source: Path, checkpoint: Path, ids: torch.LongTensor, cache: Path) -> list[UnitScore]:
    """The ranking cached next to the sweep's runs (a base checkpoint is measured once)."""
    import json

    if cache.is_file():
        return [UnitScore(tuple(r["unit"]), r["kl"]) for r in json.loads(cache.read_text())["ranking"]]
    scores = measure_sensitivity(source, checkpoint, ids)
    from qfid.utils.fs import atomic_write_text

    atomic_write_text(cache, json.dumps({"source": str(source), "checkpoint": str(checkpoint),
                                         "tokens": int(ids.numel()), "ranking": ranking_record(scores)}, indent=2) + "\n")
    return scores
