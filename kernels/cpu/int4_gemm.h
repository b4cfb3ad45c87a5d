// The INT4 matmul (kernels/cpu/int4_gemm.cpp) on checked arguments, into an output the
// caller allocated: the op runs it after its checks, and the captured decode step
// (decode_layers.cpp) calls it straight, without a dispatcher trip or an allocation.
#pragma once

#include <ATen/ATen.h>

namespace qfid_cpu {

// y [M, N] = rows [M, K] @ W^T + bias_f, W packed tiles (checked against K, group size and
// N), bias_f fp32 [N] or undefined, y contiguous in rows' dtype.
void int4_gemm_rows(const at::Tensor& packed, const at::Tensor& rows, const at::Tensor& bias_f, int64_t group_size,
                    int64_t out_features, const at::Tensor& y);

}  // namespace qfid_cpu
