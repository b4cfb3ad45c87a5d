"""Read the quantized Linear layers of an AutoAWQ or compressed-tensors checkpoint, whoever
wrote it, into qfid's unpacked types.

Which modules are quantized is read from the tensors themselves (a module with `qweight`,
`weight_packed` or `weight_scale`), not guessed from the config's target patterns; the
config only supplies what the tensors cannot say (group size, activation mode), and is
checked against the shapes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from qfid.errors import QfidError
from qfid.models.checkpoint_source import CheckpointSource
from qfid.quant.hf_quant_config import awq_group_size, ct_fp8_activations, ct_int4_group_sizes
from qfid.quant.linear import Fp8Linear, Int4Linear
from qfid.layouts.packing import unpack_awq_gemm, unpack_ct_int4
from qfid.layouts.primitives import FP8_DTYPE, Fp8Weight, Int4Weight

_MARKERS = {"qweight", "weight_packed", "weight_scale"}
_LEAVES = _MARKERS | {"qzeros", "scales", "weight_zero_point", "weight_shape", "input_scale", "weight"}


@dataclass
class StoredLinear:
    """One quantized Linear as its checkpoint holds it. `scale_dtype`: the INT4 scales'
    stored dtype (kept so a repack decodes identically); `quantize_activations`: whether
    an FP8 layer rounds its inputs through E4M3 (False for weight-only FP8)."""

    weight: Int4Weight | Fp8Weight
    scale_dtype: torch.dtype | None = None
    quantize_activations: bool = True

    def module(self, bias: torch.Tensor | None) -> nn.Module:
        if isinstance(self.weight, Int4Weight):
            return Int4Linear.from_int4(self.weight, bias, self.scale_dtype)
        return Fp8Linear.from_fp8(self.weight, bias, self.quantize_activations)

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        return self.weight.dequantize(dtype)


def read_quantized_tensors(model_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """{module name: {leaf: tensor}} for every module carrying quantization tensors (a
    module's tensors may sit in different shards; the source reads each from its own)."""
    source = CheckpointSource(model_dir)
    marked = {key.rpartition(".")[0] for key in source.names if key.rpartition(".")[2] in _MARKERS}
    wanted = [key for key in source.names if key.rpartition(".")[0] in marked and key.rpartition(".")[2] in _LEAVES]
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in source.read(wanted).items():
        prefix, _, leaf = key.rpartition(".")
        modules.setdefault(prefix, {})[leaf] = tensor
    return modules


def _require(name: str, tensors: dict, leaves: tuple[str, ...]) -> None:
    missing = [leaf for leaf in leaves if leaf not in tensors]
    if missing:
        raise QfidError(f"checkpoint is missing {', '.join(f'{name}.{leaf}' for leaf in missing)}")


def decode_awq(modules: dict[str, dict[str, torch.Tensor]], qc: dict) -> dict[str, StoredLinear]:
    group_size = awq_group_size(qc)
    decoded = {}
    for name, t in modules.items():
        _require(name, t, ("qweight", "qzeros", "scales"))
        g = group_size or t["qweight"].shape[0]
        decoded[name] = StoredLinear(unpack_awq_gemm(t["qweight"], t["qzeros"], t["scales"], g), t["scales"].dtype)
    return decoded


def decode_compressed_tensors(modules: dict[str, dict[str, torch.Tensor]], qc: dict) -> dict[str, StoredLinear]:
    decoded = {}
    for name, t in modules.items():
        if "weight_packed" in t:
            decoded[name] = _ct_int4(name, t, qc)
        elif "weight" in t and t["weight"].dtype == FP8_DTYPE:
            decoded[name] = _ct_fp8(name, t, qc)
        else:
            raise QfidError(f"{name}: unsupported compressed-tensors layout (tensors {sorted(t)}); "
                            "qfid reads pack-quantized int4 and float-quantized fp8")
    return decoded


def _ct_int4(name: str, t: dict, qc: dict) -> StoredLinear:
    _require(name, t, ("weight_packed", "weight_scale", "weight_shape"))
    in_features = int(t["weight_shape"][-1])
    n_groups = t["weight_scale"].shape[-1]
    if n_groups == 0 or in_features % n_groups:
        raise QfidError(f"{name}: weight_scale {tuple(t['weight_scale'].shape)} does not split "
                        f"in_features {in_features} into whole groups")
    group_size = in_features // n_groups
    configured = {g or in_features for g in ct_int4_group_sizes(qc)}
    if group_size not in configured:
        raise QfidError(f"{name}: group size {group_size} from the tensor shapes is not one the config "
                        f"declares for 4-bit weights ({sorted(configured) or 'none'})")
    return StoredLinear(unpack_ct_int4(t, group_size), t["weight_scale"].dtype)


def _ct_fp8(name: str, t: dict, qc: dict) -> StoredLinear:
    _require(name, t, ("weight", "weight_scale"))
    out_features = t["weight"].shape[0]
    scale = t["weight_scale"].float()
    if scale.numel() == 1:
        scale = scale.reshape(1)
    elif scale.numel() == out_features:
        scale = scale.reshape(out_features, 1)
    else:
        raise QfidError(f"{name}: weight_scale {tuple(scale.shape)} is neither per-tensor nor per-channel "
                        f"for a weight with {out_features} rows")
    mode = ct_fp8_activations(qc)
    if mode == "static":
        _require(name, t, ("input_scale",))
    input_scale = t["input_scale"].float().reshape(1) if mode == "static" else None
    return StoredLinear(Fp8Weight(t["weight"], scale, input_scale), quantize_activations=mode != "none")


DECODERS = {"awq": decode_awq, "compressed-tensors": decode_compressed_tensors}


def decode_checkpoint(model_dir: Path, qc: dict) -> dict[str, StoredLinear]:
    """Every quantized Linear of a checkpoint by its checkpoint name (without `.weight`)."""
    method = qc.get("quant_method")
    decoder = DECODERS.get(method)
    if decoder is None:
        raise QfidError(f"unknown quantization method {method!r} in {model_dir}/config.json; "
                        f"qfid loads {', '.join(DECODERS)}")
    modules = read_quantized_tensors(model_dir)
    if not modules:
        raise QfidError(f"{model_dir} declares {method} quantization but holds no quantized tensors")
    return decoder(modules, qc)
