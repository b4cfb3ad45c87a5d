"""Quantized matmul kernels for qfid's runtime, behind one dispatch layer.

    from qfid.kernels import prepare_int4, int4_linear, fp8_linear

The sources live in the repository's kernels/{triton,cuda,cpu} folders (installed as
package data); this package only builds, loads and routes to them. Importing it needs no
GPU, no triton and no compiler.
"""
from __future__ import annotations

from qfid.kernels.dispatch import (
    BACKENDS,
    KERNEL_ENV,
    PreparedInt4,
    fp8_linear,
    int4_linear,
    prepare_int4,
    select_backend,
)

__all__ = ["BACKENDS", "KERNEL_ENV", "PreparedInt4", "fp8_linear", "int4_linear", "prepare_int4", "select_backend"]
