"""RTN INT4: round-to-nearest group quantization of every mapped Linear, no calibration.
The baseline AWQ must beat."""
from __future__ import annotations

from torch import nn

from qfid.models.linears import model_linears
from qfid.models.mappings import ArchSpec
from qfid.quant.primitives import Int4Weight, int4_quantize


def rtn_quantize(model: nn.Module, spec: ArchSpec, group_size: int) -> dict[str, Int4Weight]:
    return {name: int4_quantize(ref.get(), group_size) for name, ref in model_linears(model, spec).items()}
