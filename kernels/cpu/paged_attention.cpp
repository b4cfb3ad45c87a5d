// Paged decode attention for the CPU runtime (op `qfid_cpu::paged_decode_attention`).
//
// Why: the torch path gathers every sequence's K/V blocks into a dense tensor and then runs
// two batched matmuls over it, so each cached byte crosses memory three times (gather read,
// gather write, matmul read) plus the padding of the longest sequence in its group. At
// realistic contexts (a few hundred tokens, 64 sequences) that was half of a decode step.
// Here each (sequence, KV head) pair reads its keys and values from DRAM once, straight
// from the block table, for all the query heads that share them (grouped-query attention;
// the group's later heads re-read them from L2), with a two-pass softmax in fp32:
//   pass 1: s[g][t] = scale * q_g . k_t for every key t < len (keys read once);
//   softmax per query head in fp32 (a vectorised exp, see exp_nonpositive);
//   pass 2: out_g = sum_t p[g][t] * v_t (values read once), accumulated in fp32.
//
// Layout (the engine's): caches [kv_heads, num_blocks, block_size, head_dim], contiguous;
// q and out [seqs, heads, head_dim]; block_tables [seqs, max_blocks] int32 or int64;
// context_lens [seqs] (keys each sequence attends over, this step's token included).
// dtypes float32, bfloat16, float16 (q and caches alike); head_dim 16, 32, 64, 80, 96, 128
// or 256 (a compile-time vector count keeps the accumulators in registers).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace qfid_cpu {
namespace {

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

// e^x for x <= 0 (scores minus their max), 16 lanes: x = n ln2 + r with |r| <= ln2/2
// (Cody-Waite split of ln2), e^r by its degree-6 Taylor polynomial (relative error < 2e-7
// on that interval), times 2^n built in the exponent bits. Below -87 the result is 0, as
// expf's would be to fp32 precision after normalising.
inline __m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
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

// row[t] = e^(row[t] - peak) for t < len; returns their sum.
inline float exp_and_sum(float* row, int64_t len, float peak) {
  const __m512 vpeak = _mm512_set1_ps(peak);
  __m512 acc = _mm512_setzero_ps();
  int64_t t = 0;
  for (; t + 16 <= len; t += 16) {
    const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(row + t), vpeak));
    _mm512_storeu_ps(row + t, e);
    acc = _mm512_add_ps(acc, e);
  }
  if (t < len) {
    const __mmask16 m = static_cast<__mmask16>((1u << (len - t)) - 1);
    const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, row + t), vpeak));
    _mm512_mask_storeu_ps(row + t, m, e);
    acc = _mm512_add_ps(acc, _mm512_maskz_mov_ps(m, e));
  }
  return _mm512_reduce_add_ps(acc);
}

struct Shape {
  int64_t seqs, heads, kv_heads, num_blocks, block_size, dim, max_blocks;
};

// Where token t of a sequence lives in one head's cache.
template <typename T, typename Index>
inline const T* token_row(const T* head, const Index* table, int64_t t, const Shape& s) {
  return head + (static_cast<int64_t>(table[t / s.block_size]) * s.block_size + t % s.block_size) * s.dim;
}

// One (sequence, KV head) pair. VECS = head_dim / 16 as a compile-time constant, so a
// query head's vectors and accumulators live in registers; the query heads of the group
// are taken one after another, so K and V come from DRAM for the first and from L2 after.
template <typename T, typename Index, int VECS>
void attend_one(const T* q, const T* k_cache, const T* v_cache, const Index* table, int64_t len,
                T* out, const Shape& s, int64_t kv_head, float scale, std::vector<float>& scores) {
  const int64_t group = s.heads / s.kv_heads;
  const int64_t head_stride = s.num_blocks * s.block_size * s.dim;
  const T* k_head = k_cache + kv_head * head_stride;
  const T* v_head = v_cache + kv_head * head_stride;
  scores.resize(static_cast<size_t>(len));
  float* row = scores.data();
  for (int64_t g = 0; g < group; ++g) {
    const int64_t head = kv_head * group + g;
    __m512 qv[VECS];
    for (int v = 0; v < VECS; ++v) qv[v] = _mm512_mul_ps(load16(q + head * s.dim + v * 16), _mm512_set1_ps(scale));
    for (int64_t t = 0; t < len; ++t) {   // pass 1: scores
      const T* key = token_row(k_head, table, t, s);
      __m512 acc = _mm512_mul_ps(qv[0], load16(key));
      for (int v = 1; v < VECS; ++v) acc = _mm512_fmadd_ps(qv[v], load16(key + v * 16), acc);
      row[t] = _mm512_reduce_add_ps(acc);
    }
    const float inv_sum = 1.f / exp_and_sum(row, len, *std::max_element(row, row + len));   // softmax, fp32
    __m512 acc[VECS];
    for (int v = 0; v < VECS; ++v) acc[v] = _mm512_setzero_ps();
    for (int64_t t = 0; t < len; ++t) {   // pass 2: weighted values
      const T* value = token_row(v_head, table, t, s);
      const __m512 p = _mm512_set1_ps(row[t]);
      for (int v = 0; v < VECS; ++v) acc[v] = _mm512_fmadd_ps(p, load16(value + v * 16), acc[v]);
    }
    for (int v = 0; v < VECS; ++v) store16(out + head * s.dim + v * 16, _mm512_mul_ps(acc[v], _mm512_set1_ps(inv_sum)));
  }
}

template <typename T, typename Index, int VECS>
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
      attend_one<T, Index, VECS>(qp + seq * s.heads * s.dim, kp, vp, tp + seq * s.max_blocks, lp[seq],
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
  TORCH_CHECK(k_cache.size(3) == s.dim && s.dim % 16 == 0, "paged_decode_attention: head_dim must match");
  TORCH_CHECK(s.heads % s.kv_heads == 0, "paged_decode_attention: heads must be a multiple of KV heads");
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
    TORCH_CHECK(tables.scalar_type() == at::kInt || tables.scalar_type() == at::kLong,
                "paged_decode_attention: block tables must be int32 or int64");
    const bool i32 = tables.scalar_type() == at::kInt;
    auto go = [&](auto vecs) {
      constexpr int V = decltype(vecs)::value;
      if (i32) run<T, int32_t, V>(qc, kc, vc, tables, lens, out, s, sc);
      else run<T, int64_t, V>(qc, kc, vc, tables, lens, out, s, sc);
    };
    switch (s.dim / 16) {
      case 1: go(std::integral_constant<int, 1>{}); break;
      case 2: go(std::integral_constant<int, 2>{}); break;
      case 4: go(std::integral_constant<int, 4>{}); break;
      case 5: go(std::integral_constant<int, 5>{}); break;
      case 6: go(std::integral_constant<int, 6>{}); break;
      case 8: go(std::integral_constant<int, 8>{}); break;
      case 16: go(std::integral_constant<int, 16>{}); break;
      default: TORCH_CHECK(false, "paged_decode_attention: head_dim must be 16, 32, 64, 80, 96, 128 or 256");
    }
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
