// Fused elementwise ops of the Llama-family forward on the CPU runtime (ops
// `qfid_cpu::rms_norm`, `add_rms_norm_`, `silu_and_mul`, `rotary_`).
//
// Why: in torch each of these is a chain of 3-7 ops, each reading and writing the whole
// activation (RMSNorm alone is upcast, square, mean, rsqrt, multiply, downcast, multiply),
// plus one dispatcher trip each. At a 64-row decode step that chain was a quarter of the
// step, and at prefill ~15%. Here each op reads its input once and writes its output once.
//
// Every op keeps torch's rounding steps for bf16/fp16 (`round_as` between what torch runs
// as separate ops), so the engine's results stay those of transformers' own forward: the
// only difference left is the fp32 summation order inside RMSNorm's mean.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>

#include "elementwise.h"
#include "vec16.h"

namespace qfid_cpu {
namespace {

// Rows per parallel task: about 16K elements, so a decode-sized input runs on one thread.
inline int64_t grain(int64_t width) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(width, 1)); }

// y = w * T(x * rsqrt(mean(x^2) + eps)), as transformers' LlamaRMSNorm: the normalised
// value is cast to the model dtype before the weight multiplies it.
template <typename T>
void norm_row(const T* x, const T* w, T* y, int64_t D, float eps) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < D; i += 16) {
    const __m512 v = load16(x + i);
    acc = _mm512_fmadd_ps(v, v, acc);
  }
  const __m512 inv = _mm512_set1_ps(1.f / std::sqrt(_mm512_reduce_add_ps(acc) / D + eps));
  for (int64_t i = 0; i < D; i += 16) {
    const __m512 n = round_as<T>(_mm512_mul_ps(load16(x + i), inv));
    store16(y + i, _mm512_mul_ps(load16(w + i), n));
  }
}

// residual = T(residual + x) in place, then y = norm(residual).
template <typename T>
void add_norm_row(const T* x, T* residual, const T* w, T* y, int64_t D, float eps) {
  for (int64_t i = 0; i < D; i += 16) store16(residual + i, _mm512_add_ps(load16(residual + i), load16(x + i)));
  norm_row(residual, w, y, D, eps);
}

// y = T(silu(g)) * u for one row of [gate | up].
template <typename T>
void silu_mul_row(const T* gate, const T* up, T* y, int64_t I) {
  const __m512 one = _mm512_set1_ps(1.f);
  for (int64_t i = 0; i < I; i += 16) {
    const __m512 g = load16(gate + i);
    const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), g))));
    store16(y + i, _mm512_mul_ps(round_as<T>(silu), load16(up + i)));
  }
}

// One head, rotate-half RoPE in place: [a, b] -> [a cos - b sin, b cos + a sin], each
// product rounded to T before the sum, as torch computes it on T tensors.
template <typename T>
void rotate_head(T* x, const T* cos, const T* sin, int64_t half) {
  for (int64_t i = 0; i < half; i += 16) {
    const __m512 a = load16(x + i), b = load16(x + half + i), c = load16(cos + i), s = load16(sin + i);
    store16(x + i, _mm512_sub_ps(round_as<T>(_mm512_mul_ps(a, c)), round_as<T>(_mm512_mul_ps(b, s))));
    store16(x + half + i, _mm512_add_ps(round_as<T>(_mm512_mul_ps(b, c)), round_as<T>(_mm512_mul_ps(a, s))));
  }
}

}  // namespace

// The ops' arithmetic on checked arguments, into outputs the caller allocated: the ops
// above and the captured decode step (decode_layers.cpp) both run it.
void rms_norm_rows(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& y, double eps) {
  const int64_t D = x.size(1), stride = x.stride(0);
  for_dtype(x.scalar_type(), "rms_norm", [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.data_ptr<T>();
    const T* wp = weight.data_ptr<T>();
    T* yp = y.data_ptr<T>();
    at::parallel_for(0, x.size(0), grain(D), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) norm_row(xp + r * stride, wp, yp + r * D, D, float(eps));
    });
  });
}

void add_rms_norm_rows(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                       const at::Tensor& y, double eps) {
  const int64_t D = x.size(1), stride = x.stride(0);
  for_dtype(x.scalar_type(), "add_rms_norm_", [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.data_ptr<T>();
    T* rp = residual.data_ptr<T>();
    const T* wp = weight.data_ptr<T>();
    T* yp = y.data_ptr<T>();
    at::parallel_for(0, x.size(0), grain(D), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) add_norm_row(xp + r * stride, rp + r * D, wp, yp + r * D, D, float(eps));
    });
  });
}

void silu_and_mul_rows(const at::Tensor& gate_up, const at::Tensor& y) {
  const int64_t I = gate_up.size(1) / 2, stride = gate_up.stride(0);
  for_dtype(gate_up.scalar_type(), "silu_and_mul", [&](auto tag) {
    using T = decltype(tag);
    const T* gp = gate_up.data_ptr<T>();
    T* yp = y.data_ptr<T>();
    at::parallel_for(0, gate_up.size(0), grain(2 * I), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) silu_mul_row(gp + r * stride, gp + r * stride + I, yp + r * I, I);
    });
  });
}

void rotary_rows(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t tokens = x.size(0), heads = x.size(1), D = x.size(2), half = D / 2, stride = x.stride(0);
  for_dtype(x.scalar_type(), "rotary_", [&](auto tag) {
    using T = decltype(tag);
    T* xp = x.data_ptr<T>();
    const T* cp = cos.data_ptr<T>();
    const T* sp = sin.data_ptr<T>();
    at::parallel_for(0, tokens, grain(heads * D), [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t)
        for (int64_t h = 0; h < heads; ++h) rotate_head(xp + t * stride + h * D, cp + t * half, sp + t * half, half);
    });
  });
}

namespace {

void check_rows(const at::Tensor& x, const at::Tensor& weight, const char* op) {
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1 && x.size(1) % 16 == 0,
              op, ": x must be [rows, D] with unit inner stride and D a multiple of 16");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(1) && weight.is_contiguous() &&
              weight.scalar_type() == x.scalar_type(), op, ": weight must be [D] in x's dtype");
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  c10::InferenceMode guard;
  check_rows(x, weight, "rms_norm");
  at::Tensor y = at::empty(x.sizes(), x.options());
  rms_norm_rows(x, weight, y, eps);
  return y;
}

at::Tensor add_rms_norm_(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight, double eps) {
  c10::InferenceMode guard;
  check_rows(x, weight, "add_rms_norm_");
  TORCH_CHECK(residual.sizes() == x.sizes() && residual.is_contiguous() && residual.scalar_type() == x.scalar_type(),
              "add_rms_norm_: residual must be a contiguous tensor shaped and typed like x");
  at::Tensor y = at::empty(x.sizes(), x.options());
  add_rms_norm_rows(x, residual, weight, y, eps);
  return y;
}

at::Tensor silu_and_mul(const at::Tensor& gate_up) {
  c10::InferenceMode guard;
  TORCH_CHECK(gate_up.dim() == 2 && gate_up.stride(1) == 1 && gate_up.size(1) % 32 == 0,
              "silu_and_mul: gate_up must be [rows, 2I] with unit inner stride and I a multiple of 16");
  at::Tensor y = at::empty({gate_up.size(0), gate_up.size(1) / 2}, gate_up.options());
  silu_and_mul_rows(gate_up, y);
  return y;
}

// x [T, H, D] (inner two dims dense, any row stride: q and k are views of the fused qkv
// output), cos/sin [T, D/2] contiguous in x's dtype.
at::Tensor rotary_(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  c10::InferenceMode guard;
  TORCH_CHECK(x.dim() == 3 && x.stride(2) == 1 && x.stride(1) == x.size(2) && x.size(2) % 32 == 0,
              "rotary_: x must be [tokens, heads, D] with dense heads and D a multiple of 32");
  const int64_t tokens = x.size(0), half = x.size(2) / 2;
  TORCH_CHECK(cos.sizes() == sin.sizes() && cos.dim() == 2 && cos.size(0) == tokens && cos.size(1) == half &&
              cos.is_contiguous() && sin.is_contiguous() && cos.scalar_type() == x.scalar_type() &&
              sin.scalar_type() == x.scalar_type(), "rotary_: cos and sin must be [tokens, D/2] in x's dtype");
  rotary_rows(x, cos, sin);
  return x;
}

}  // namespace
}  // namespace qfid_cpu

TORCH_LIBRARY_FRAGMENT(qfid_cpu, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor", &qfid_cpu::rms_norm);
  m.def("add_rms_norm_(Tensor x, Tensor(a!) residual, Tensor weight, float eps) -> Tensor", &qfid_cpu::add_rms_norm_);
  m.def("silu_and_mul(Tensor gate_up) -> Tensor", &qfid_cpu::silu_and_mul);
  m.def("rotary_(Tensor(a!) x, Tensor cos, Tensor sin) -> Tensor(a!)", &qfid_cpu::rotary_);
}
