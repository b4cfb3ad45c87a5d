// Activation dtypes the CUDA kernels are instantiated for, and their fp32 conversions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace qfid_cuda {

// Matches the dtype codes the torch binding passes (binding.cpp: dtype_code()).
enum DType : int { kHalf = 0, kBFloat16 = 1, kFloat = 2 };

__device__ __forceinline__ float to_f32(half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f32(float v) { return v; }

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ half from_f32<half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }

}  // namespace qfid_cuda
