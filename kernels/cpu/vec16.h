// 16-lane fp32 views of fp32 / bf16 / fp16 data, and a vectorised e^x, shared by the
// CPU kernels that work in the model's own dtype (paged attention, the fused elementwise
// ops). Conversions round to nearest even, as torch's float -> bf16/fp16 casts do, so a
// fused op can reproduce torch's result bit for bit where its rounding steps are kept.
#pragma once

#include <ATen/ATen.h>
#include <immintrin.h>

namespace qfid_cpu {

// 16 consecutive values of any supported dtype as fp32.
template <typename T> inline __m512 load16(const T* p);
template <> inline __m512 load16<float>(const float* p) { return _mm512_loadu_ps(p); }
template <> inline __m512 load16<at::BFloat16>(const at::BFloat16* p) {
  __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}
template <> inline __m512 load16<at::Half>(const at::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

template <typename T> inline void store16(T* p, __m512 v);
template <> inline void store16<float>(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
template <> inline void store16<at::BFloat16>(at::BFloat16* p, __m512 v) {
  // Round to nearest even, as torch's float -> bfloat16 conversion does (no NaN inputs here).
  __m512i bits = _mm512_castps_si512(v);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  bits = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(_mm512_srli_epi32(bits, 16)));
}
template <> inline void store16<at::Half>(at::Half* p, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}

// v rounded to T's precision and back to fp32: reproduces the rounding torch applies
// between two ops on T tensors.
template <typename T> inline __m512 round_as(__m512 v);
template <> inline __m512 round_as<float>(__m512 v) { return v; }
template <> inline __m512 round_as<at::BFloat16>(__m512 v) {
  __m512i bits = _mm512_castps_si512(v);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  bits = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
  return _mm512_castsi512_ps(_mm512_and_si512(bits, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
}
template <> inline __m512 round_as<at::Half>(__m512 v) {
  return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}

// e^x, 16 lanes: x = n ln2 + r with |r| <= ln2/2 (Cody-Waite split of ln2), e^r by its
// degree-6 Taylor polynomial (relative error < 2e-7 on that interval), times 2^n built in
// the exponent bits. x is clamped to [-87, 88]: below, the result is ~1e-38 where expf's
// would underflow (no caller can tell after normalising or adding 1); above, fp32 overflows.
inline __m512 exp16(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}

// Run `body(T{})` with T the C++ type of `dtype` (fp32, bf16 or fp16); any other dtype is
// an error naming `op`.
template <typename F>
void for_dtype(at::ScalarType dtype, const char* op, F&& body) {
  switch (dtype) {
    case at::kFloat: body(float{}); break;
    case at::kBFloat16: body(at::BFloat16{}); break;
    case at::kHalf: body(at::Half{}); break;
    default: TORCH_CHECK(false, op, ": dtype must be float32, bfloat16 or float16, got ", dtype);
  }
}

}  // namespace qfid_cpu
