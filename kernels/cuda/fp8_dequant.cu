// FP8 E4M3 -> fp16 / bf16 / fp32 dequantization with a per-row or per-tensor scale.
//
// Why: on GPUs without FP8 tensor cores (sm_80) and for weight-only FP8, the fastest
// route is dequantize once into the activation dtype and let cuBLAS run the GEMM. Each
// thread converts 8 consecutive weights (one 8-byte load, one 16-byte store for 16-bit
// outputs) with the hardware E4M3 conversion in cuda_fp8.h. K not divisible by 8 takes
// the scalar kernel. No torch headers here: the nvcc resource test compiles it alone.
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "dtypes.cuh"

namespace qfid_cuda {
namespace {

__device__ __forceinline__ float e4m3_to_f32(uint8_t bits) {
  __nv_fp8_e4m3 v;
  v.__x = bits;
  return float(v);
}

template <typename T>
__global__ void fp8_dequant_vec8(const uint8_t* __restrict__ w, const float* __restrict__ scale, int scale_per_row,
                                 T* __restrict__ out, int64_t N, int64_t K) {
  const int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * 8;
  if (i >= N * K) return;
  const float s = scale[scale_per_row ? i / K : 0];
  const uint2 packed = *reinterpret_cast<const uint2*>(w + i);
  const uint8_t* b = reinterpret_cast<const uint8_t*>(&packed);
  alignas(16) T vals[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) vals[j] = from_f32<T>(e4m3_to_f32(b[j]) * s);
  if (sizeof(T) == 2) {
    *reinterpret_cast<uint4*>(out + i) = *reinterpret_cast<const uint4*>(vals);
  } else {
#pragma unroll
    for (int j = 0; j < 8; ++j) out[i + j] = vals[j];
  }
}

template <typename T>
__global__ void fp8_dequant_scalar(const uint8_t* __restrict__ w, const float* __restrict__ scale, int scale_per_row,
                                   T* __restrict__ out, int64_t N, int64_t K) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * K) return;
  out[i] = from_f32<T>(e4m3_to_f32(w[i]) * scale[scale_per_row ? i / K : 0]);
}

template <typename T>
void launch(const uint8_t* w, const float* scale, int per_row, void* out, int64_t N, int64_t K, cudaStream_t stream) {
  const int block = 256;
  if (K % 8 == 0) {
    const int64_t threads = N * K / 8;
    fp8_dequant_vec8<T><<<int((threads + block - 1) / block), block, 0, stream>>>(w, scale, per_row, static_cast<T*>(out), N, K);
  } else {
    fp8_dequant_scalar<T><<<int((N * K + block - 1) / block), block, 0, stream>>>(w, scale, per_row, static_cast<T*>(out), N, K);
  }
}

}  // namespace

// out [N, K] in `dtype` = E4M3 w [N, K] * scale ([N] when scale_per_row, else [1]).
int fp8_dequant(int dtype, const uint8_t* w, const float* scale, int scale_per_row, void* out, int64_t N, int64_t K,
                cudaStream_t stream) {
  switch (dtype) {
    case kHalf: launch<half>(w, scale, scale_per_row, out, N, K, stream); break;
    case kBFloat16: launch<__nv_bfloat16>(w, scale, scale_per_row, out, N, K, stream); break;
    case kFloat: launch<float>(w, scale, scale_per_row, out, N, K, stream); break;
    default: return -1;
  }
  return int(cudaGetLastError());
}

}  // namespace qfid_cuda
