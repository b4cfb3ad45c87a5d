// Activations in, results out, for the CPU weight-only kernels. Done in C++ (and the
// results written straight into the output dtype with the bias added) so that a batch-1
// call costs one trip through the dispatcher: on SmolLM2's 576-wide layers a chain of
// ATen or Python ops around the kernel costs more than the matmul itself.
#pragma once

#include <ATen/ATen.h>
#include <immintrin.h>

#include <optional>
#include <vector>

namespace qfid_cpu {

// x ~= hi + lo with both halves bf16: exact for bf16 (lo is absent), within 2^-17 relative
// for fp32, exact for fp16 (11 significant bits fit in two bf16 halves).
struct Bf16Split {
  at::Tensor hi;
  std::optional<at::Tensor> lo;
};

inline void check_activation_dtype(const at::Tensor& x) {
  const auto t = x.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kHalf || t == at::kBFloat16, "activations must be fp32, fp16 or bf16, got ", t);
}

inline Bf16Split split_bf16(const at::Tensor& x2d) {
  check_activation_dtype(x2d);
  if (x2d.scalar_type() == at::kBFloat16) return {x2d.contiguous(), std::nullopt};
  at::Tensor hi = x2d.to(at::kBFloat16).contiguous();
  at::Tensor lo = (x2d.to(at::kFloat) - hi.to(at::kFloat)).to(at::kBFloat16).contiguous();
  return {hi, lo};
}

// [..., K] -> [M, K]
inline at::Tensor as_rows(const at::Tensor& x) { return x.reshape({-1, x.size(-1)}); }

// The output [..., N] in x's dtype, allocated as [M, N] rows.
inline at::Tensor new_output(const at::Tensor& rows, int64_t N) {
  return at::empty({rows.size(0), N}, rows.options());
}

inline at::Tensor with_leading_dims(const at::Tensor& y, const at::Tensor& x) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
  shape.push_back(y.size(1));
  return y.reshape(shape);
}

// fp32 bias (a copy only when it is not one already); undefined when absent.
inline at::Tensor float_bias(const std::optional<at::Tensor>& bias, int64_t N) {
  if (!bias.has_value()) return at::Tensor();
  TORCH_CHECK(bias->numel() == N, "bias has ", bias->numel(), " elements, expected ", N);
  return bias->to(at::kFloat).contiguous();
}

// Result writers: fp32 values (bias already added) into the output's dtype.
inline void store_one(void* out, at::ScalarType dtype, int64_t i, float v) {
  if (dtype == at::kFloat) static_cast<float*>(out)[i] = v;
  else if (dtype == at::kBFloat16) static_cast<at::BFloat16*>(out)[i] = at::BFloat16(v);
  else static_cast<at::Half*>(out)[i] = at::Half(v);
}

inline void store16(void* out, at::ScalarType dtype, int64_t i, __m512 v, __mmask16 mask) {
  if (dtype == at::kFloat) _mm512_mask_storeu_ps(static_cast<float*>(out) + i, mask, v);
  else if (dtype == at::kBFloat16) _mm256_mask_storeu_epi16(static_cast<uint16_t*>(out) + i, mask, (__m256i)_mm512_cvtneps_pbh(v));
  else _mm256_mask_storeu_epi16(static_cast<uint16_t*>(out) + i, mask, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}

// A finished tile of 64 output columns: fp32 sums of rows [m0, m1) (acc row r - m0 at
// acc + (r - m0) * 64), plus the bias, written into columns n0.. of the [M, N] output.
inline void store_tile_rows(const float* acc, int64_t m0, int64_t m1, int64_t n0, int64_t N, const float* bias,
                            at::ScalarType dtype, void* out) {
  for (int b = 0; b < 4; ++b) {
    const int64_t n = n0 + 16 * b, left = N - n;
    if (left <= 0) break;
    const __mmask16 mask = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
    const __m512 add = bias ? _mm512_maskz_loadu_ps(mask, bias + n) : _mm512_setzero_ps();
    for (int64_t m = m0; m < m1; ++m)
      store16(out, dtype, m * N + n, _mm512_add_ps(_mm512_loadu_ps(acc + (m - m0) * 64 + 16 * b), add), mask);
  }
}

}  // namespace qfid_cpu
