// The CPU runtime's captured decode step (op `qfid_cpu::decode_layers`): every decoder
// layer of a decode-only step run from one C++ call, through the same qfid_cpu ops, with
// the same arguments and in the same order as the Python layers in qfid/layers/model.py
// (DecoderLayer, Attention, DenseMLP, CpuAttention), so the hidden states are bit for bit
// the same.
//
// Why: at batch 1 on the default model (30 layers) the kernels of a step take ~3.5 ms and
// the Python between them took ~3 ms more: about ten op calls from Python and seven module
// calls per layer, 5-10 us each. Here each op is a C++ dispatcher call (well under 1 us),
// the role a captured CUDA graph plays on a GPU (qfid/engine/cuda_graphs.py). The caller
// (qfid/layers/cpu_decode.py) decides which models and steps qualify.
//
// Arguments, per layer l (L layers):
//   weights[6l..6l+5]  input norm, post-attention norm, qkv, o, gate_up, down
//   biases[4l..4l+3]   the four linears' biases (None where absent)
//   scales[8l..8l+7]   per linear its FP8 weight scale and static input scale (None
//                      where absent or not FP8)
//   config             [heads, kv_heads, head_dim] then, per layer and linear, (kind,
//                      detail, out_features); kind 0 = INT4 tiles (int4_gemm, detail =
//                      group size), 1 = packed bf16 (bf16_gemm), 2 = FP8 (fp8_gemm after
//                      fp8_round_activations when detail is 1)
//   kv_caches[2l..2l+1] the layer's K and V cache
// x: [T, hidden] this step's input to layer 0 (the embeddings) and residual: None for the
// first layer (the residual stream starts as x, and is then updated in place by the fused
// add-norms, as in DecoderLayer.forward).
// Returns (the last layer's output, the residual) for the final norm.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/InferenceMode.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

namespace qfid_cpu {
namespace {

using OptTensor = std::optional<at::Tensor>;

constexpr int64_t kWeightsPerLayer = 6;
constexpr int64_t kLinearsPerLayer = 4;   // qkv, o, gate_up, down: a bias each
constexpr int64_t kConfigPerLinear = 3;
constexpr int64_t kConfigHead = 3;
constexpr int64_t kScalesPerLinear = 2;
enum LinearKind : int64_t { kInt4 = 0, kBf16 = 1, kFp8 = 2 };

template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// The qfid_cpu ops this step calls, looked up once; signatures as each op's kernel declares them.
struct Ops {
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&, int64_t, int64_t)>
      int4_gemm = op<at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&, int64_t, int64_t)>(
          "qfid_cpu::int4_gemm");
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&, int64_t)> bf16_gemm =
      op<at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&, int64_t)>("qfid_cpu::bf16_gemm");
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&)>
      fp8_gemm = op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&)>(
          "qfid_cpu::fp8_gemm");
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const OptTensor&)> fp8_round =
      op<at::Tensor(const at::Tensor&, const OptTensor&)>("qfid_cpu::fp8_round_activations");
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, double)> rms_norm =
      op<at::Tensor(const at::Tensor&, const at::Tensor&, double)>("qfid_cpu::rms_norm");
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double)> add_rms_norm =
      op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double)>("qfid_cpu::add_rms_norm_");
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&)> silu_and_mul =
      op<at::Tensor(const at::Tensor&)>("qfid_cpu::silu_and_mul");
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)> rotary =
      op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>("qfid_cpu::rotary_");
  c10::TypedOperatorHandle<void(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                const at::Tensor&)>
      store_kv = op<void(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                         const at::Tensor&)>("qfid_cpu::store_kv_");
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      const at::Tensor&, double)>
      decode_attention = op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                       const at::Tensor&, double)>("qfid_cpu::paged_decode_attention");
};

const Ops& ops() {
  static const Ops instance;
  return instance;
}

// One linear: config holds its (kind, detail, out_features), scales its FP8 weight and input scales.
at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const OptTensor& bias, const int64_t* config,
                  const OptTensor& weight_scale, const OptTensor& input_scale) {
  const int64_t kind = config[0], detail = config[1], out_features = config[2];
  if (kind == kInt4) return ops().int4_gemm.call(weight, x, bias, detail, out_features);
  if (kind == kBf16) return ops().bf16_gemm.call(weight, x, bias, out_features);
  TORCH_CHECK(kind == kFp8 && weight_scale.has_value(), "decode_layers: unknown linear kind ", kind);
  const at::Tensor rounded = detail ? ops().fp8_round.call(x, input_scale) : x;
  return ops().fp8_gemm.call(weight, rounded, *weight_scale, bias);
}

std::tuple<at::Tensor, at::Tensor> decode_layers(const at::Tensor& embeddings, const OptTensor& residual_in,
                                                 at::TensorList weights, const c10::List<OptTensor>& biases,
                                                 const c10::List<OptTensor>& scales, at::IntArrayRef config,
                                                 at::TensorList kv_caches,
                                                 const at::Tensor& cos, const at::Tensor& sin,
                                                 const at::Tensor& slot_mapping, const at::Tensor& block_tables,
                                                 const at::Tensor& context_lens, double scale, double eps) {
  c10::InferenceMode guard;
  const int64_t layers = static_cast<int64_t>(weights.size()) / kWeightsPerLayer;
  TORCH_CHECK(layers > 0 && static_cast<int64_t>(weights.size()) == layers * kWeightsPerLayer &&
                  static_cast<int64_t>(biases.size()) == layers * kLinearsPerLayer &&
                  static_cast<int64_t>(scales.size()) == layers * kLinearsPerLayer * kScalesPerLinear &&
                  static_cast<int64_t>(config.size()) == kConfigHead + layers * kLinearsPerLayer * kConfigPerLinear &&
                  static_cast<int64_t>(kv_caches.size()) == 2 * layers,
              "decode_layers: weights, biases, config and caches must describe the same layers");
  TORCH_CHECK(embeddings.dim() == 2, "decode_layers: x must be [tokens, hidden]");
  const int64_t heads = config[0], kv_heads = config[1], dim = config[2];
  const int64_t tokens = embeddings.size(0), q_width = heads * dim, kv_width = kv_heads * dim;
  const Ops& o = ops();
  // Converted once for all layers (the attention op converts what is not int64 on every call).
  const at::Tensor lens = context_lens.to(at::kLong).contiguous();
  const at::Tensor tables = block_tables.contiguous();
  at::Tensor x = embeddings;
  at::Tensor residual = residual_in.has_value() ? *residual_in : at::Tensor();
  for (int64_t l = 0; l < layers; ++l) {
    const at::Tensor* w = weights.data() + l * kWeightsPerLayer;
    const int64_t* c = config.data() + kConfigHead + l * kLinearsPerLayer * kConfigPerLinear;
    const int64_t b = l * kLinearsPerLayer;
    // linear i of this layer: its bias, config and FP8 scales
    auto run = [&](int64_t i, const at::Tensor& input) {
      const int64_t sc = (b + i) * kScalesPerLinear;
      return linear(input, w[2 + i], biases.get(b + i), c + i * kConfigPerLinear, scales.get(sc), scales.get(sc + 1));
    };
    at::Tensor h;
    if (!residual.defined()) {
      residual = x;
      h = o.rms_norm.call(x, w[0], eps);
    } else {
      h = o.add_rms_norm.call(x, residual, w[0], eps);
    }
    const at::Tensor qkv = run(0, h);
    at::Tensor q = qkv.narrow(1, 0, q_width).view({tokens, heads, dim});
    at::Tensor k = qkv.narrow(1, q_width, kv_width).view({tokens, kv_heads, dim});
    const at::Tensor v = qkv.narrow(1, q_width + kv_width, kv_width).view({tokens, kv_heads, dim});
    q = o.rotary.call(q, cos, sin);
    k = o.rotary.call(k, cos, sin);
    const at::Tensor& k_cache = kv_caches[2 * l];
    const at::Tensor& v_cache = kv_caches[2 * l + 1];
    o.store_kv.call(k_cache, v_cache, k, v, slot_mapping);
    const at::Tensor attention = o.decode_attention.call(q, k_cache, v_cache, tables, lens, scale);
    const at::Tensor attended = run(1, attention.reshape({tokens, q_width}));
    h = o.add_rms_norm.call(attended, residual, w[1], eps);
    const at::Tensor gate_up = run(2, h);
    x = run(3, o.silu_and_mul.call(gate_up));
  }
  return {x, residual};
}

}  // namespace
}  // namespace qfid_cpu

TORCH_LIBRARY_FRAGMENT(qfid_cpu, m) {
  m.def("decode_layers(Tensor(a!) x, Tensor(b!)? residual, Tensor[] weights, Tensor?[] biases, Tensor?[] scales, "
        "int[] config, Tensor[] kv_caches, Tensor cos, Tensor sin, Tensor slot_mapping, Tensor block_tables, "
        "Tensor context_lens, float scale, float eps) -> (Tensor, Tensor)",
        &qfid_cpu::decode_layers);
}
