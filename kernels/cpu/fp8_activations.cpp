// Activations rounded through E4M3 as a W8A8 kernel sees them (op
// `qfid_cpu::fp8_round_activations`): per token (dynamic: scale = max|x| / 448, at least
// 1e-12) or with a static per-tensor scale, then q = e4m3(clamp(x / scale, +-448)) and
// x' = q * scale in x's dtype.
//
// Why: the torch chain (qfid/layouts/primitives.fp8_fake_quantize_activation: upcast,
// abs, amax, divide, clamp, divide, clamp, cast, upcast, multiply, downcast) is about ten
// ops per linear; at a batch-1 decode step of the default model that made an FP8
// checkpoint decode slower than bf16. Here one pass per row, with the same arithmetic
// step by step: fp32 division and multiplication (exactly rounded, so order-free), torch's
// own conversions to E4M3 and to the output dtype (round to nearest even; E4M3 16 values
// at a time in round_e4m3, c10's scalar steps in vector form), and a max of absolute values
// (exact in any order; a NaN makes it NaN, as torch's amax): bit for bit the torch chain's
// result, NaN where it is NaN (tests: every bf16 and fp16 value, every E4M3 tie in fp32).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/Float8_e4m3fn.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <type_traits>

#include "vec16.h"

namespace qfid_cpu {
namespace {

constexpr float kE4m3Max = 448.0f;
constexpr float kMinScale = 1e-12f;

// The dtypes with 16-lane loads and stores (vec16.h); double stays scalar.
template <typename T>
constexpr bool kVectorised = !std::is_same_v<T, double>;

// One value as the torch chain computes it: scalar E4M3 conversion (c10's, ~5 us for a
// 576-wide row: at batch 1 it ran 120 times a step on one thread while the other waited,
// 0.6 ms of a ~5 ms FP8 step). Kept for the row's tail, for 16 values with a NaN quotient
// and for rows with an infinite scale.
template <typename T>
inline T round_one(T x, float scale) {
  const float v = std::min(std::max(static_cast<float>(x) / scale, -kE4m3Max), kE4m3Max);
  return static_cast<T>(static_cast<float>(c10::Float8_e4m3fn(v)) * scale);
}

// v (|v| <= 448, no NaN) rounded to the nearest E4M3 value, ties to even, as fp32: c10's
// conversion step for step. From 2^-6 up (normals) the mantissa keeps 3 bits; below,
// (subnormals) the value becomes a multiple of 2^-9, by adding and taking away 2^14 (whose
// fp32 spacing is 2^-9). The sign goes back on after, so small negatives give -0 as c10's.
inline __m512 round_e4m3(__m512 v) {
  const __m512i sign = _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(INT32_MIN));
  const __m512 a = _mm512_abs_ps(v);
  __m512i bits = _mm512_castps_si512(a);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 20), _mm512_set1_epi32(1));
  bits = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFFF)));
  bits = _mm512_and_si512(bits, _mm512_set1_epi32(static_cast<int32_t>(0xFFF00000u)));
  const __m512 magic = _mm512_set1_ps(16384.0f);
  const __m512 subnormal = _mm512_sub_ps(_mm512_add_ps(a, magic), magic);
  const __mmask16 small = _mm512_cmp_ps_mask(a, _mm512_set1_ps(0.015625f), _CMP_LT_OQ);
  const __m512 r = _mm512_mask_blend_ps(small, _mm512_castsi512_ps(bits), subnormal);
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(r), sign));
}

// The largest |x[k]| (exact in any order), or NaN if any x[k] is NaN: torch's amax
// propagates a NaN, so the torch chain's row is then NaN throughout.
template <typename T>
float row_peak(const T* x, int64_t K) {
  float peak = 0.f;
  int64_t k = 0;
  if constexpr (kVectorised<T>) {
    __m512 top = _mm512_setzero_ps();
    __mmask16 nan = 0;
    for (; k + 16 <= K; k += 16) {
      const __m512 v = load16(x + k);
      nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
      top = _mm512_max_ps(_mm512_abs_ps(v), top);
    }
    if (nan) return NAN;
    peak = _mm512_reduce_max_ps(top);
  }
  for (; k < K; ++k) {
    const float v = static_cast<float>(x[k]);
    if (std::isnan(v)) return NAN;
    peak = std::max(peak, std::fabs(v));
  }
  return peak;
}

template <typename T>
void round_row(const T* x, T* y, int64_t K, std::optional<float> static_scale) {
  const float scale = static_scale ? *static_scale : std::max(row_peak(x, K) / kE4m3Max, kMinScale);
  int64_t k = 0;
  // An infinite scale (a row holding inf) makes 0 * inf: NaN, whose bits the scalar path sets.
  if constexpr (kVectorised<T>) {
    const __m512 vscale = _mm512_set1_ps(scale), lo = _mm512_set1_ps(-kE4m3Max), hi = _mm512_set1_ps(kE4m3Max);
    for (; std::isfinite(scale) && k + 16 <= K; k += 16) {
      const __m512 d = _mm512_div_ps(load16(x + k), vscale);
      if (_mm512_cmp_ps_mask(d, d, _CMP_UNORD_Q)) {   // a NaN (or inf / inf): the scalar path's bits
        for (int64_t j = k; j < k + 16; ++j) y[j] = round_one(x[j], scale);
        continue;
      }
      const __m512 v = _mm512_min_ps(_mm512_max_ps(d, lo), hi);
      store16(y + k, _mm512_mul_ps(round_e4m3(v), vscale));
    }
  }
  for (; k < K; ++k) y[k] = round_one(x[k], scale);
}

at::Tensor fp8_round_activations(const at::Tensor& x, const std::optional<at::Tensor>& input_scale) {
  c10::InferenceMode guard;
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) > 0, "fp8_round_activations: x must have an inner dimension");
  const at::Tensor rows = x.reshape({-1, x.size(-1)}).contiguous();
  std::optional<float> static_scale;
  if (input_scale.has_value()) {
    TORCH_CHECK(input_scale->numel() == 1, "fp8_round_activations: the static scale is one number");
    static_scale = input_scale->to(at::kFloat).item<float>();
  }
  at::Tensor y = at::empty_like(rows);
  const int64_t K = rows.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, rows.scalar_type(), "fp8_round_activations", [&] {
    const scalar_t* xp = rows.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, rows.size(0), std::max<int64_t>(1, 16384 / K), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) round_row(xp + r * K, yp + r * K, K, static_scale);
    });
  });
  return y.view(x.sizes());
}

}  // namespace
}  // namespace qfid_cpu

TORCH_LIBRARY_FRAGMENT(qfid_cpu, m) {
  m.def("fp8_round_activations(Tensor x, Tensor? input_scale) -> Tensor", &qfid_cpu::fp8_round_activations);
}
