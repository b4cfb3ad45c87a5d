// AWQ INT4 kernels for the AutoAWQ GEMM layout (qweight int32 [K, N/8], qzeros int32
// [K/G, N/8], scales [K/G, N] as fp32 — the binding upcasts them once, exactly):
//
//  * awq_gemv: y[M, N] += x[M, K] @ W for decode-sized M (1..8). Each lane owns one packed
//    column (8 outputs), so a warp reads 32 consecutive words = 128 contiguous bytes per
//    input row: fully coalesced, every weight byte read once. The input rows are cut into
//    slices of kSlice rows (the whole group when kSlice does not divide it); warps and the
//    grid's y axis share the slices (split-K), and each lane loads kBatch words before it
//    uses the first, so a warp has several loads in flight rather than one. (Measured on an
//    H100 with one group of 128 rows per warp and one load at a time: a 4096x4096 layer
//    took 36 us at batch 1, latency-bound, against 16 us for fp16 cuBLAS.) Per-block
//    partials meet in shared memory and one atomicAdd per output leaves the block. The
//    weight is dequantized in registers as q * s - z * s (one FMA), never stored.
//  * awq_dequant: the dense weight as [K, N] (row-major, coalesced 16-byte stores) for
//    prefill-sized batches, which then run through cuBLAS.
//
// No torch headers here: the nvcc resource test compiles this file on its own.
#include <cuda_runtime.h>

#include <cstdint>

#include "dtypes.cuh"

namespace qfid_cuda {
namespace {

constexpr int kLanes = 32;   // packed columns per block, one per lane
constexpr int kWarps = 8;    // slices in flight per block
constexpr int kMaxRows = 8;  // largest M the GEMV is instantiated for
constexpr int kSlice = 32;   // input rows per warp task, when it divides the group size
// Weight words each lane loads before using the first: fewer for many rows, whose
// accumulators leave fewer registers (<= 128 keeps two blocks per SM resident).
template <int M> constexpr int kBatch = M <= 4 ? 8 : 4;

// Nibble i of a packed word holds column 8c + kOrder[i] (AutoAWQ's interleave).
__device__ constexpr int kOrder[8] = {0, 2, 4, 6, 1, 3, 5, 7};

// acc[m][j] += x[m, k] * w'[k, 8c + j] for the 8 columns of one packed word.
template <typename T, int M>
__device__ __forceinline__ void fma_word(uint32_t w, const T* __restrict__ x, int K, int k, const float (&s)[8],
                                         const float (&zs)[8], float (&acc)[M][8]) {
  float xv[M];
#pragma unroll
  for (int m = 0; m < M; ++m) xv[m] = to_f32(x[m * K + k]);
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int j = kOrder[i];
    const float wf = fmaf(float((w >> (4 * i)) & 0xF), s[j], -zs[j]);
#pragma unroll
    for (int m = 0; m < M; ++m) acc[m][j] = fmaf(xv[m], wf, acc[m][j]);
  }
}

// Resident blocks per SM the register budget must allow: 4 at batch 1 (<= 64 registers),
// 2 otherwise (<= 128); tests/unit/test_kernels_cuda.py checks both, and no spills.
template <typename T, int M>
__global__ void __launch_bounds__(kLanes * kWarps, M == 1 ? 4 : 2)
awq_gemv_kernel(const T* __restrict__ x, const int32_t* __restrict__ qweight, const int32_t* __restrict__ qzeros,
                const float* __restrict__ scales, float* __restrict__ y, int K, int N, int group_size, int slice) {
  __shared__ float partial[M][8][kLanes];
  const int lane = threadIdx.x, warp = threadIdx.y;
  const int words = N / 8, tasks = K / slice;
  const int col = blockIdx.x * kLanes + lane;
  for (int i = warp * kLanes + lane; i < M * 8 * kLanes; i += kWarps * kLanes) (&partial[0][0][0])[i] = 0.f;
  __syncthreads();

  float acc[M][8];
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[m][j] = 0.f;

  if (col < words) {
    for (int t = blockIdx.y * kWarps + warp; t < tasks; t += gridDim.y * kWarps) {
      const int k0 = t * slice, end = k0 + slice, g = k0 / group_size;
      float s[8], zs[8];
      const uint32_t zw = static_cast<uint32_t>(qzeros[g * words + col]);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int j = kOrder[i];
        s[j] = scales[g * N + 8 * col + j];
        zs[j] = float((zw >> (4 * i)) & 0xF) * s[j];
      }
      int k = k0;
      for (; k + kBatch<M> <= end; k += kBatch<M>) {
        uint32_t w[kBatch<M>];
#pragma unroll
        for (int u = 0; u < kBatch<M>; ++u) w[u] = static_cast<uint32_t>(__ldg(qweight + (k + u) * words + col));
#pragma unroll
        for (int u = 0; u < kBatch<M>; ++u) fma_word<T, M>(w[u], x, K, k + u, s, zs, acc);
      }
      for (; k < end; ++k) fma_word<T, M>(static_cast<uint32_t>(__ldg(qweight + k * words + col)), x, K, k, s, zs, acc);
    }
  }
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int j = 0; j < 8; ++j) atomicAdd(&partial[m][j][lane], acc[m][j]);
  __syncthreads();
  for (int i = warp * kLanes + lane; i < M * 8 * kLanes; i += kWarps * kLanes) {
    const int m = i / (8 * kLanes), j = (i / kLanes) % 8, c = blockIdx.x * kLanes + i % kLanes;
    if (c < words) atomicAdd(&y[m * N + 8 * c + j], partial[m][j][i % kLanes]);
  }
}

template <typename T>
__global__ void awq_dequant_kernel(const int32_t* __restrict__ qweight, const int32_t* __restrict__ qzeros,
                                   const float* __restrict__ scales, T* __restrict__ out, int K, int N, int group_size) {
  const int words = N / 8;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= int64_t(K) * words) return;
  const int k = int(idx / words), col = int(idx % words), g = k / group_size;
  const uint32_t w = static_cast<uint32_t>(qweight[idx]);
  const uint32_t zw = static_cast<uint32_t>(qzeros[g * words + col]);
  alignas(16) T vals[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int j = kOrder[i];
    const float q = float((w >> (4 * i)) & 0xF), z = float((zw >> (4 * i)) & 0xF);
    vals[j] = from_f32<T>((q - z) * scales[g * N + 8 * col + j]);
  }
  T* dst = out + int64_t(k) * N + 8 * col;
  if (sizeof(T) * 8 == 16) {
    *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(vals);
  } else {
#pragma unroll
    for (int j = 0; j < 8; ++j) dst[j] = vals[j];
  }
}

template <typename T, int M>
void launch_gemv_rows(const void* x, const int32_t* qweight, const int32_t* qzeros, const float* scales, float* y,
                      int K, int N, int group_size, int split, cudaStream_t stream) {
  const int slice = group_size % kSlice == 0 ? kSlice : group_size;
  const int useful = (K / slice + kWarps - 1) / kWarps;   // more y blocks than this would idle
  const dim3 block(kLanes, kWarps), grid((N / 8 + kLanes - 1) / kLanes, split < useful ? split : useful);
  awq_gemv_kernel<T, M><<<grid, block, 0, stream>>>(static_cast<const T*>(x), qweight, qzeros, scales, y, K, N,
                                                    group_size, slice);
}

template <typename T>
void launch_gemv(const void* x, int M, const int32_t* qweight, const int32_t* qzeros, const float* scales, float* y,
                 int K, int N, int group_size, int split, cudaStream_t stream) {
  switch (M) {
    case 1: launch_gemv_rows<T, 1>(x, qweight, qzeros, scales, y, K, N, group_size, split, stream); break;
    case 2: launch_gemv_rows<T, 2>(x, qweight, qzeros, scales, y, K, N, group_size, split, stream); break;
    case 3: launch_gemv_rows<T, 3>(x, qweight, qzeros, scales, y, K, N, group_size, split, stream); break;
    case 4: launch_gemv_rows<T, 4>(x, qweight, qzeros, scales, y, K, N, group_size, split, stream); break;
    case 5: launch_gemv_rows<T, 5>(x, qweight, qzeros, scales, y, K, N, group_size, split, stream); break;
    case 6: launch_gemv_rows<T, 6>(x, qweight, qzeros, scales, y, K, N, group_size, split, stream); break;
    case 7: launch_gemv_rows<T, 7>(x, qweight, qzeros, scales, y, K, N, group_size, split, stream); break;
    default: launch_gemv_rows<T, 8>(x, qweight, qzeros, scales, y, K, N, group_size, split, stream); break;
  }
}

}  // namespace

// y (fp32, zero-filled by the caller) += x[M, K] @ W; M <= kMaxRows; `split` = grid y size
// asked for (capped at the number of slices per warp).
int awq_gemv(int dtype, const void* x, int M, const int32_t* qweight, const int32_t* qzeros, const float* scales,
             float* y, int K, int N, int group_size, int split, cudaStream_t stream) {
  if (M < 1 || M > kMaxRows || N % 8 || group_size < 1 || K % group_size || split < 1) return -1;
  switch (dtype) {
    case kHalf: launch_gemv<half>(x, M, qweight, qzeros, scales, y, K, N, group_size, split, stream); break;
    case kBFloat16: launch_gemv<__nv_bfloat16>(x, M, qweight, qzeros, scales, y, K, N, group_size, split, stream); break;
    case kFloat: launch_gemv<float>(x, M, qweight, qzeros, scales, y, K, N, group_size, split, stream); break;
    default: return -1;
  }
  return int(cudaGetLastError());
}

// out [K, N] in `dtype` = (q - z) * s.
int awq_dequant(int dtype, const int32_t* qweight, const int32_t* qzeros, const float* scales, void* out, int K, int N,
                int group_size, cudaStream_t stream) {
  if (N % 8 || K % group_size) return -1;
  const int64_t threads = int64_t(K) * (N / 8);
  const int block = 256, grid = int((threads + block - 1) / block);
  switch (dtype) {
    case kHalf: awq_dequant_kernel<half><<<grid, block, 0, stream>>>(qweight, qzeros, scales, static_cast<half*>(out), K, N, group_size); break;
    case kBFloat16: awq_dequant_kernel<__nv_bfloat16><<<grid, block, 0, stream>>>(qweight, qzeros, scales, static_cast<__nv_bfloat16*>(out), K, N, group_size); break;
    case kFloat: awq_dequant_kernel<float><<<grid, block, 0, stream>>>(qweight, qzeros, scales, static_cast<float*>(out), K, N, group_size); break;
    default: return -1;
  }
  return int(cudaGetLastError());
}

int awq_max_rows() { return kMaxRows; }

}  // namespace qfid_cuda
