// The CPU runtime's captured decode step (op `qfid_cpu::decode_layers`): every decoder
// layer of a decode-only step run from one C++ call, through the same qfid_cpu ops, with
// the same arguments and in the same order as the Python layers in qfid/layers/model.py
// (DecoderLayer, Attention, DenseMLP, CpuAttention), so the hidden states are bit for bit
// the same.
//
// Why: at batch 1 on the default model (30 layers) the kernels of a step take ~3.5 ms and
// the Python between them took ~3 ms more: about ten op calls from Python and seven module
// calls per layer, 5-10 us each. Here the role a captured CUDA graph plays on a GPU
// (qfid/engine/cuda_graphs.py): the elementwise ops, the KV store, the attention and the
// INT4 matmuls run their arithmetic straight (elementwise.h, paged_attention.h,
// int4_gemm.h) into buffers allocated once per step, and the step's lengths and slots are
// checked once for all layers. The same calls through the dispatcher, each allocating its
// output and converting and checking its indices, cost 1.5-3 us apiece: about 0.4 ms of a
// 5 ms step. bf16 and FP8 linears still go through their ops. The caller
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

#include "activations.h"
#include "elementwise.h"
#include "int4_gemm.h"
#include "paged_attention.h"

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

// The qfid_cpu ops this step still calls through the dispatcher (bf16 and FP8 linears),
// looked up once; signatures as each op's kernel declares them.
struct Ops {
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&, int64_t)> bf16_gemm =
      op<at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&, int64_t)>("qfid_cpu::bf16_gemm");
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&)>
      fp8_gemm = op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&)>(
          "qfid_cpu::fp8_gemm");
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const OptTensor&)> fp8_round =
      op<at::Tensor(const at::Tensor&, const OptTensor&)>("qfid_cpu::fp8_round_activations");
};

const Ops& ops() {
  static const Ops instance;
  return instance;
}

// One linear: config holds its (kind, detail, out_features), scales its FP8 weight and
// input scales. An INT4 linear writes into `out` ([tokens, out_features], reused across
// layers) and returns it; the others return their op's new tensor.
at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const OptTensor& bias, const int64_t* config,
                  const OptTensor& weight_scale, const OptTensor& input_scale, const at::Tensor& out) {
  const int64_t kind = config[0], detail = config[1], out_features = config[2];
  if (kind == kInt4) {
    const at::Tensor y = out.size(1) == out_features ? out : at::empty({x.size(0), out_features}, x.options());
    int4_gemm_rows(weight, x, float_bias(bias, out_features), detail, out_features, y);
    return y;
  }
  if (kind == kBf16) return ops().bf16_gemm.call(weight, x, bias, out_features);
  TORCH_CHECK(kind == kFp8 && weight_scale.has_value(), "decode_layers: unknown linear kind ", kind);
  const at::Tensor rounded = detail ? ops().fp8_round.call(x, input_scale) : x;
  return ops().fp8_gemm.call(weight, rounded, *weight_scale, bias);
}

// q, k, v [tokens, heads, dim] views of one fused qkv output, made again only when the
// output is another tensor (an INT4 qkv writes the same buffer in every layer).
struct QkvViews {
  const void* base = nullptr;
  at::Tensor q, k, v;
  void of(const at::Tensor& qkv, int64_t heads, int64_t kv_heads, int64_t dim) {
    if (qkv.data_ptr() == base) return;
    const int64_t tokens = qkv.size(0), q_width = heads * dim, kv_width = kv_heads * dim;
    q = qkv.narrow(1, 0, q_width).view({tokens, heads, dim});
    k = qkv.narrow(1, q_width, kv_width).view({tokens, kv_heads, dim});
    v = qkv.narrow(1, q_width + kv_width, kv_width).view({tokens, kv_heads, dim});
    base = qkv.data_ptr();
  }
};

// What the ops would check on every call, checked once per step: the caches, the step's
// rows, RoPE tables and norm weights (the linears check their own weights).
void check_step(const at::Tensor& x, at::TensorList weights, at::TensorList kv_caches, const at::Tensor& cos,
                const at::Tensor& sin, const at::Tensor& slot_mapping, const at::Tensor& block_tables,
                const at::Tensor& context_lens, int64_t layers, int64_t kv_heads, int64_t dim) {
  const int64_t tokens = x.size(0), hidden = x.size(1);
  const at::Tensor& cache0 = kv_caches[0];
  for (const at::Tensor& cache : kv_caches)
    TORCH_CHECK(cache.sizes() == cache0.sizes() && cache.is_contiguous() && cache.scalar_type() == x.scalar_type(),
                "decode_layers: every KV cache must be contiguous [kv_heads, blocks, block_size, dim] in x's dtype");
  TORCH_CHECK(cache0.dim() == 4 && cache0.size(0) == kv_heads && cache0.size(3) == dim,
              "decode_layers: the KV caches' heads and head_dim must match the config");
  TORCH_CHECK(block_tables.dim() == 2 && block_tables.size(0) == tokens && context_lens.numel() == tokens &&
                  slot_mapping.numel() == tokens, "decode_layers: one block table row, length and slot per token");
  TORCH_CHECK(x.is_contiguous() && hidden % 16 == 0 && dim % 32 == 0,
              "decode_layers: x must be contiguous, hidden a multiple of 16 and head_dim of 32");
  TORCH_CHECK(cos.dim() == 2 && cos.sizes() == sin.sizes() && cos.size(0) == tokens && cos.size(1) == dim / 2 &&
                  cos.is_contiguous() && sin.is_contiguous() && cos.scalar_type() == x.scalar_type() &&
                  sin.scalar_type() == x.scalar_type(),
              "decode_layers: cos and sin must be [tokens, head_dim / 2] in x's dtype");
  for (int64_t l = 0; l < layers; ++l)
    for (int64_t i = 0; i < 2; ++i) {
      const at::Tensor& norm = weights[l * kWeightsPerLayer + i];
      TORCH_CHECK(norm.dim() == 1 && norm.size(0) == hidden && norm.is_contiguous() &&
                      norm.scalar_type() == x.scalar_type(), "decode_layers: norm weights must be [hidden] in x's dtype");
    }
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
  const int64_t tokens = embeddings.size(0), hidden = embeddings.size(1), q_width = heads * dim;
  const int64_t* last = config.data() + kConfigHead + (layers - 1) * kLinearsPerLayer * kConfigPerLinear;
  const int64_t qkv_width = last[2], intermediate = last[kConfigPerLinear + kConfigPerLinear + 2] / 2;
  check_step(embeddings, weights, kv_caches, cos, sin, slot_mapping, block_tables, context_lens, layers, kv_heads,
             dim);
  // Converted and checked once for all layers (each op call would do both again).
  const at::Tensor lens = context_lens.to(at::kLong).contiguous();
  const at::Tensor slots = slot_mapping.to(at::kLong).contiguous();
  const at::Tensor tables = block_tables.contiguous();
  const at::Tensor& cache0 = kv_caches[0];
  check_context_lens(lens, tables.size(1) * cache0.size(2));
  check_slots(slots, cache0.size(1) * cache0.size(2));
  // This step's activations, reused by every layer: `hidden_out` holds the o projection's
  // output and then the down projection's (each is read before the next one is written).
  const auto options = embeddings.options();
  const at::Tensor h = at::empty({tokens, hidden}, options);
  const at::Tensor hidden_out = at::empty({tokens, hidden}, options);
  const at::Tensor qkv_out = at::empty({tokens, qkv_width}, options);
  const at::Tensor gate_up_out = at::empty({tokens, 2 * intermediate}, options);
  const at::Tensor act = at::empty({tokens, intermediate}, options);
  const at::Tensor attention = at::empty({tokens, q_width}, options);
  const at::Tensor attention_heads = attention.view({tokens, heads, dim});
  QkvViews views;
  at::Tensor x = embeddings;
  at::Tensor residual = residual_in.has_value() ? *residual_in : at::Tensor();
  for (int64_t l = 0; l < layers; ++l) {
    const at::Tensor* w = weights.data() + l * kWeightsPerLayer;
    const int64_t* c = config.data() + kConfigHead + l * kLinearsPerLayer * kConfigPerLinear;
    const int64_t b = l * kLinearsPerLayer;
    // linear i of this layer: its bias, config and FP8 scales
    auto run = [&](int64_t i, const at::Tensor& input, const at::Tensor& out) {
      const int64_t sc = (b + i) * kScalesPerLinear;
      return linear(input, w[2 + i], biases.get(b + i), c + i * kConfigPerLinear, scales.get(sc), scales.get(sc + 1),
                    out);
    };
    if (!residual.defined()) {
      residual = x;
      rms_norm_rows(x, w[0], h, eps);
    } else {
      add_rms_norm_rows(x, residual, w[0], h, eps);
    }
    views.of(run(0, h, qkv_out), heads, kv_heads, dim);
    rotary_rows(views.q, cos, sin);
    rotary_rows(views.k, cos, sin);
    const at::Tensor& k_cache = kv_caches[2 * l];
    const at::Tensor& v_cache = kv_caches[2 * l + 1];
    store_kv_rows(k_cache, v_cache, views.k, views.v, slots);
    decode_attention_rows(views.q.contiguous(), k_cache, v_cache, tables, lens, attention_heads, scale);
    const at::Tensor attended = run(1, attention, hidden_out);
    add_rms_norm_rows(attended, residual, w[1], h, eps);
    const at::Tensor gate_up = run(2, h, gate_up_out);
    const at::Tensor activated =
        gate_up.size(1) == 2 * intermediate ? act : at::empty({tokens, gate_up.size(1) / 2}, options);
    silu_and_mul_rows(gate_up, activated);
    x = run(3, activated, hidden_out);
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
