"""FP8 E4M3 for a whole model: weight scales per output channel or per tensor; activation
scales dynamic (per token, computed at run time — nothing to calibrate) or static (one
per-tensor scale per Linear, the max |x| seen on calibration data / 448).

Static scales are observed with forward pre-hooks on each nn.Linear. transformers 5 fuses
MoE experts into 3-D parameters with no Linear to hook, so static activations are refused
for MoE models rather than guessed.
"""
from __future__ import annotations

import torch
from torch import nn

from qfid.errors import QfidError
from qfid.models.linears import model_linears
from qfid.models.mappings import ArchSpec
from qfid.quant.primitives import FP8_E4M3_MAX, Fp8Weight, fp8_quantize


def fp8_quantize_model(model: nn.Module, spec: ArchSpec, per_channel: bool,
                       calib_ids: torch.Tensor | None = None) -> dict[str, Fp8Weight]:
    refs = model_linears(model, spec)
    quantized = {name: fp8_quantize(ref.get(), per_channel) for name, ref in refs.items()}
    if calib_ids is not None:
        if spec.moe:
            raise QfidError("static FP8 activation scales are not supported for MoE models; use --activations dynamic")
        for name, amax in observe_input_amax(model, refs, calib_ids).items():
            quantized[name].input_scale = (amax / FP8_E4M3_MAX).clamp(min=1e-12).reshape(1)
    return quantized


def observe_input_amax(model: nn.Module, refs: dict, calib_ids: torch.Tensor, batch_size: int = 4) -> dict[str, torch.Tensor]:
    """Max |input| of each Linear over the calibration batches."""
    amax = {name: torch.zeros(()) for name in refs}
    hooks = []
    for name, ref in refs.items():
        def record(_module, args, name=name):
            amax[name] = torch.maximum(amax[name], args[0].detach().abs().amax().float())
        hooks.append(ref.module.register_forward_pre_hook(record))
    try:
        with torch.inference_mode():
            for start in range(0, calib_ids.shape[0], batch_size):
                model(calib_ids[start : start + batch_size])
    finally:
        for h in hooks:
            h.remove()
    return amax
