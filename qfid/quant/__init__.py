"""Quantization: pure-torch primitives, RTN / AWQ / FP8 schemes, packing, formats."""
