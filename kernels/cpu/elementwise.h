// The fused elementwise ops' arithmetic (kernels/cpu/elementwise.cpp) on checked
// arguments, into outputs the caller allocated: the ops run it after their checks, and the
// captured decode step (decode_layers.cpp) calls it straight, without a dispatcher trip or
// an allocation per call.
#pragma once

#include <ATen/ATen.h>

namespace qfid_cpu {

// y = rms_norm(x) * weight; x [rows, D] with unit inner stride, y [rows, D] contiguous.
void rms_norm_rows(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& y, double eps);
// residual += x in place, then y = rms_norm(residual) * weight.
void add_rms_norm_rows(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                       const at::Tensor& y, double eps);
// y [rows, I] = silu(gate) * up of gate_up [rows, 2I].
void silu_and_mul_rows(const at::Tensor& gate_up, const at::Tensor& y);
// Rotate-half RoPE in place on x [tokens, heads, D] (dense heads, any row stride).
void rotary_rows(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace qfid_cpu
