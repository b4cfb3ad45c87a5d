// Paged decode attention for the CPU runtime (op `qfid_cpu::paged_decode_attention`).
//
// Why: the torch path gathers every sequence's K/V blocks into a dense tensor and then runs
// two batched matmuls over it, so each cached byte crosses memory three times (gather read,
// gather write, matmul read) plus the padding of the longest sequence in its group. At
// realistic contexts (a few hundred tokens, 64 sequences) that was half of a decode step.
// Here each (sequence, KV head) pair reads its keys and values once, straight from the
// block table, for all the query heads that share them (grouped-query attention), with a
// two-pass softmax in fp32:
//   pass 1: s[g][t] = scale * q_g . k_t for every key t < len (keys read once);
//   softmax per query head in fp32;
//   pass 2: out_g = sum_t p[g][t] * v_t (values read once), accumulated in fp32.
//
// Layout (the engine's): caches [kv_heads, num_blocks, block_size, head_dim], contiguous;
// q and out [seqs, heads, head_dim]; block_tables [seqs, max_blocks] int32 or int64;
// context_lens [seqs] (keys each sequence attends over, this step's token included).
// dtypes float32, bfloat16, float16 (q and caches alike); head_dim a multiple of 16.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace qfid_cpu {
namespace {

constexpr int kMaxDimVecs = 16;   // head_dim up to 256
constexpr int kMaxGroup = 16;     // query heads per KV head

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

struct Shape {
  int64_t seqs, heads, kv_heads, num_blocks, block_size, dim, max_blocks;
};

template <typename T, typename Index>
void attend_one(const T* q, const T* k_cache, const T* v_cache, const Index* table, int64_t len,
                T* out, const Shape& s, int64_t kv_head, float scale, std::vector<float>& scores) {
  const int64_t group = s.heads / s.kv_heads, vecs = s.dim / 16;
  const int64_t head_stride = s.num_blocks * s.block_size * s.dim;
  const T* k_head = k_cache + kv_head * head_stride;
  const T* v_head = v_cache + kv_head * head_stride;
  scores.resize(static_cast<size_t>(group * len));

  __m512 qv[kMaxGroup][kMaxDimVecs];
  for (int64_t g = 0; g < group; ++g)
    for (int64_t v = 0; v < vecs; ++v)
      qv[g][v] = _mm512_mul_ps(load16(q + (kv_head * group + g) * s.dim + v * 16), _mm512_set1_ps(scale));

  for (int64_t t = 0; t < len; ++t) {   // pass 1: scores
    const T* key = k_head + (static_cast<int64_t>(table[t / s.block_size]) * s.block_size + t % s.block_size) * s.dim;
    __m512 kv[kMaxDimVecs];
    for (int64_t v = 0; v < vecs; ++v) kv[v] = load16(key + v * 16);
    for (int64_t g = 0; g < group; ++g) {
      __m512 acc = _mm512_mul_ps(qv[g][0], kv[0]);
      for (int64_t v = 1; v < vecs; ++v) acc = _mm512_fmadd_ps(qv[g][v], kv[v], acc);
      scores[g * len + t] = _mm512_reduce_add_ps(acc);
    }
  }
  float inv_sum[kMaxGroup];
  for (int64_t g = 0; g < group; ++g) {   // softmax, fp32
    float* row = scores.data() + g * len;
    const float peak = *std::max_element(row, row + len);
    float sum = 0.f;
    for (int64_t t = 0; t < len; ++t) sum += (row[t] = std::exp(row[t] - peak));
    inv_sum[g] = 1.f / sum;
  }
  __m512 acc[kMaxGroup][kMaxDimVecs];
  for (int64_t g = 0; g < group; ++g)
    for (int64_t v = 0; v < vecs; ++v) acc[g][v] = _mm512_setzero_ps();
  for (int64_t t = 0; t < len; ++t) {   // pass 2: weighted values
    const T* value = v_head + (static_cast<int64_t>(table[t / s.block_size]) * s.block_size + t % s.block_size) * s.dim;
    __m512 vv[kMaxDimVecs];
    for (int64_t v = 0; v < vecs; ++v) vv[v] = load16(value + v * 16);
    for (int64_t g = 0; g < group; ++g) {
      const __m512 p = _mm512_set1_ps(scores[g * len + t]);
      for (int64_t v = 0; v < vecs; ++v) acc[g][v] = _mm512_fmadd_ps(p, vv[v], acc[g][v]);
    }
  }
  for (int64_t g = 0; g < group; ++g)
    for (int64_t v = 0; v < vecs; ++v)
      store16(out + (kv_head * group + g) * s.dim + v * 16, _mm512_mul_ps(acc[g][v], _mm512_set1_ps(inv_sum[g])));
}

template <typename T, typename Index>
void run(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& tables,
         const at::Tensor& lens, at::Tensor& out, const Shape& s, float scale) {
  const T* qp = q.data_ptr<T>();
  const T* kp = k_cache.data_ptr<T>();
  const T* vp = v_cache.data_ptr<T>();
  const Index* tp = tables.data_ptr<Index>();
  const int64_t* lp = lens.data_ptr<int64_t>();
  T* op = out.data_ptr<T>();
  at::parallel_for(0, s.seqs * s.kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t seq = i / s.kv_heads, kv_head = i % s.kv_heads;
      attend_one<T, Index>(qp + seq * s.heads * s.dim, kp, vp, tp + seq * s.max_blocks, lp[seq],
                           op + seq * s.heads * s.dim, s, kv_head, scale, scores);
    }
  });
}

at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                  const at::Tensor& block_tables, const at::Tensor& context_lens, double scale) {
  c10::InferenceMode guard;
  TORCH_CHECK(q.dim() == 3 && k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes(),
              "paged_decode_attention: q [seqs, heads, dim], caches [kv_heads, blocks, block_size, dim]");
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() && q.scalar_type() == v_cache.scalar_type(),
              "paged_decode_attention: q and caches must share a dtype");
  const Shape s{q.size(0), q.size(1), k_cache.size(0), k_cache.size(1), k_cache.size(2), q.size(2),
                block_tables.size(1)};
  TORCH_CHECK(k_cache.size(3) == s.dim && s.dim % 16 == 0 && s.dim / 16 <= kMaxDimVecs,
              "paged_decode_attention: head_dim must match and be a multiple of 16 up to 256");
  TORCH_CHECK(s.heads % s.kv_heads == 0 && s.heads / s.kv_heads <= kMaxGroup,
              "paged_decode_attention: up to 16 query heads per KV head");
  TORCH_CHECK(block_tables.dim() == 2 && block_tables.size(0) == s.seqs && context_lens.numel() == s.seqs,
              "paged_decode_attention: one block table row and one length per sequence");
  at::Tensor qc = q.contiguous(), kc = k_cache.contiguous(), vc = v_cache.contiguous();
  at::Tensor tables = block_tables.contiguous();
  at::Tensor lens = context_lens.to(at::kLong).contiguous();
  TORCH_CHECK(lens.numel() == 0 || (lens.min().item<int64_t>() >= 1 &&
              lens.max().item<int64_t>() <= s.max_blocks * s.block_size),
              "paged_decode_attention: context lengths must be in [1, max_blocks * block_size]");
  at::Tensor out = at::empty_like(qc);
  const float sc = static_cast<float>(scale);
  auto dispatch_index = [&](auto tag) {
    using T = decltype(tag);
    if (tables.scalar_type() == at::kInt) run<T, int32_t>(qc, kc, vc, tables, lens, out, s, sc);
    else if (tables.scalar_type() == at::kLong) run<T, int64_t>(qc, kc, vc, tables, lens, out, s, sc);
    else TORCH_CHECK(false, "paged_decode_attention: block tables must be int32 or int64");
  };
  switch (q.scalar_type()) {
    case at::kFloat: dispatch_index(float{}); break;
    case at::kBFloat16: dispatch_index(at::BFloat16{}); break;
    case at::kHalf: dispatch_index(at::Half{}); break;
    default: TORCH_CHECK(false, "paged_decode_attention: dtype must be float32, bfloat16 or float16");
  }
  return out;
}

}  // namespace
}  // namespace qfid_cpu

TORCH_LIBRARY_FRAGMENT(qfid_cpu, m) {
  m.def("paged_decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, "
        "Tensor context_lens, float scale) -> Tensor",
        &qfid_cpu::paged_decode_attention);
}
