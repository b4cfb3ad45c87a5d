"""The quantized number formats at the bottom of the stack: the pure-torch reference
quantizers (`primitives`) and the exact on-disk INT4 bit layouts (`packing`).

Both the quantizers above (`qfid.quant`) and the kernels (`qfid.kernels`, which read packed
weights as they are) import these, so they live below both: `quant` -> `kernels` ->
`layouts`, never back.
"""
