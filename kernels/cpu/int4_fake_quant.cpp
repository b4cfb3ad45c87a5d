// Fused INT4 group fake quantization for the AWQ searches (op `qfid_cpu::int4_fake_quantize`).
//
//   out[r, j] = T( Q_g( clamp(w[r, j] * s[j], -clip[r, g], clip[r, g]) ) / s[j] )
//
// with Q_g the asymmetric group quantize-dequantize of qfid.layouts.primitives
// (`int4_fake_quantize_`): scale = max(max - min, 1e-5) / 15, zero = clamp(round(-min / scale),
// 0, 15), q = clamp(round(v / scale) + zero, 0, 15), v' = (q - zero) * scale. `s` (the AWQ
// scale candidate, one per input column) and `clip` (one per group) are optional; T is the
// output dtype (fp32, or bf16 to hand a candidate straight to a bf16 scoring pass).
//
// Why: in torch this is a chain of ~12 full-size passes (multiply, clamp, amax, amin, divide,
// round, add, clamp, subtract, multiply, divide, cast), and on an 8B's block the searches
// call it ~200 times on tensors of up to 59M elements: a fifth of AWQ's time. Here each group
// of G values is read once, kept in registers, and written once.
//
// Every step is the same single IEEE fp32 operation torch performs, in the same order
// (vdivps is correctly rounded, roundscale rounds half to even like torch.round, no FMA
// contraction: -ffp-contract=off), so the result equals the torch reference bit for bit;
// tests/unit/test_kernels_cpu.py checks that on random and tie-heavy inputs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <torch/library.h>

#include "vec16.h"

namespace qfid_cpu {
namespace {

constexpr int kMaxGroupVectors = 16;   // group sizes up to 256 stay in registers
constexpr float kMinScale = 1e-5f;     // primitives._MIN_SCALE
constexpr float kInt4Max = 15.0f;

inline __m512 round_even(__m512 v) { return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }

// One group of n = G / 16 vectors of one row: load (times s), clip, quantize-dequantize,
// divide by s, store as T.
template <typename T>
void fake_quantize_group(const float* w, const float* s, const float* clip, T* out, int n) {
  __m512 v[kMaxGroupVectors];
  __m512 hi = _mm512_set1_ps(-INFINITY), lo = _mm512_set1_ps(INFINITY);
  const __m512 c = clip ? _mm512_set1_ps(*clip) : _mm512_setzero_ps();
  const __m512 neg_c = clip ? _mm512_set1_ps(-*clip) : _mm512_setzero_ps();
  for (int k = 0; k < n; ++k) {
    __m512 x = _mm512_loadu_ps(w + 16 * k);
    if (s) x = _mm512_mul_ps(x, _mm512_loadu_ps(s + 16 * k));
    if (clip) x = _mm512_min_ps(_mm512_max_ps(x, neg_c), c);   // torch.clamp(x, -c, c)
    v[k] = x;
    hi = _mm512_max_ps(hi, x);
    lo = _mm512_min_ps(lo, x);
  }
  const float g_max = _mm512_reduce_max_ps(hi), g_min = _mm512_reduce_min_ps(lo);
  const float scale = std::max(g_max - g_min, kMinScale) / kInt4Max;
  const float zero = std::min(std::max(std::nearbyint(-g_min / scale), 0.0f), kInt4Max);
  const __m512 vs = _mm512_set1_ps(scale), vz = _mm512_set1_ps(zero);
  const __m512 q_lo = _mm512_setzero_ps(), q_hi = _mm512_set1_ps(kInt4Max);
  for (int k = 0; k < n; ++k) {
    __m512 q = _mm512_add_ps(round_even(_mm512_div_ps(v[k], vs)), vz);
    q = _mm512_min_ps(_mm512_max_ps(q, q_lo), q_hi);
    __m512 y = _mm512_mul_ps(_mm512_sub_ps(q, vz), vs);
    if (s) y = _mm512_div_ps(y, _mm512_loadu_ps(s + 16 * k));
    store16(out + 16 * k, y);
  }
}

// w fp32 [rows, in] contiguous; out [rows, in] fp32 or bf16 contiguous (may be w itself);
// col_scale fp32 [in]; clip fp32 [rows, in / G].
at::Tensor& int4_fake_quantize(const at::Tensor& w, int64_t group_size, const c10::optional<at::Tensor>& clip,
                               const c10::optional<at::Tensor>& col_scale, at::Tensor& out) {
  c10::InferenceMode guard;
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous() && w.scalar_type() == at::kFloat,
              "int4_fake_quantize: w must be a contiguous fp32 [rows, in] tensor");
  const int64_t rows = w.size(0), in = w.size(1);
  TORCH_CHECK(group_size % 16 == 0 && group_size / 16 <= kMaxGroupVectors && in % group_size == 0,
              "int4_fake_quantize: group size must be a multiple of 16 up to 256 dividing the input width");
  TORCH_CHECK(out.sizes() == w.sizes() && out.is_contiguous() &&
              (out.scalar_type() == at::kFloat || out.scalar_type() == at::kBFloat16),
              "int4_fake_quantize: out must be a contiguous fp32 or bf16 tensor shaped like w");
  const int64_t groups = in / group_size;
  const float* sp = nullptr;
  const float* cp = nullptr;
  if (col_scale) {
    TORCH_CHECK(col_scale->numel() == in && col_scale->is_contiguous() && col_scale->scalar_type() == at::kFloat,
                "int4_fake_quantize: col_scale must be fp32 [in]");
    sp = col_scale->data_ptr<float>();
  }
  if (clip) {
    TORCH_CHECK(clip->numel() == rows * groups && clip->is_contiguous() && clip->scalar_type() == at::kFloat,
                "int4_fake_quantize: clip must be contiguous fp32 [rows, in / G]");
    cp = clip->data_ptr<float>();
  }
  const float* wp = w.data_ptr<float>();
  const int n = static_cast<int>(group_size / 16);
  auto run = [&](auto* op) {
    at::parallel_for(0, rows, std::max<int64_t>(1, 65536 / in), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t at = r * in + g * group_size;
          fake_quantize_group(wp + at, sp ? sp + g * group_size : nullptr, cp ? cp + r * groups + g : nullptr,
                              op + at, n);
        }
    });
  };
  if (out.scalar_type() == at::kFloat) run(out.data_ptr<float>());
  else run(out.data_ptr<at::BFloat16>());
  return out;
}

}  // namespace
}  // namespace qfid_cpu

TORCH_LIBRARY_FRAGMENT(qfid_cpu, m) {
  m.def("int4_fake_quantize(Tensor w, int group_size, Tensor? clip, Tensor? col_scale, Tensor(a!) out) -> Tensor(a!)",
        &qfid_cpu::int4_fake_quantize);
}
