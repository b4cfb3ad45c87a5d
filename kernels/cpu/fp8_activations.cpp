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
// own scalar conversions to E4M3 and to the output dtype (round to nearest even), and a
// max of absolute values (exact in any order): bit for bit the torch chain's result.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/Float8_e4m3fn.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>

namespace qfid_cpu {
namespace {

constexpr float kE4m3Max = 448.0f;
constexpr float kMinScale = 1e-12f;

template <typename T>
void round_row(const T* x, T* y, int64_t K, std::optional<float> static_scale) {
  float scale;
  if (static_scale) {
    scale = *static_scale;
  } else {
    float peak = 0.f;
    for (int64_t k = 0; k < K; ++k) peak = std::max(peak, std::fabs(static_cast<float>(x[k])));
    scale = std::max(peak / kE4m3Max, kMinScale);
  }
  for (int64_t k = 0; k < K; ++k) {
    const float v = std::min(std::max(static_cast<float>(x[k]) / scale, -kE4m3Max), kE4m3Max);
    y[k] = static_cast<T>(static_cast<float>(c10::Float8_e4m3fn(v)) * scale);
  }
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
