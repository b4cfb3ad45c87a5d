// Paged decode attention for the CPU runtime (op `qfid_cpu::paged_decode_attention`).
//
// Why: the torch path gathers every sequence's K/V blocks into a dense tensor and then runs
// two batched matmuls over it, so each cached byte crosses memory three times (gather read,
// gather write, matmul read) plus the padding of the longest sequence in its group. At
// realistic contexts (a few hundred tokens, 64 sequences) that was half of a decode step.
// Here each (sequence, KV head) pair reads its keys and values from DRAM once, straight
// from the block table, for all the query heads that share them (grouped-query attention:
// up to four heads per pass over the keys, so each key is loaded and converted once for
// them), with a two-pass softmax in fp32:
//   pass 1: s[g][t] = scale * q_g . k_t for every key t < len (bf16: `vdpbf16ps`, 16 keys
//           at a time per head, their 16 lane sums from one transpose-and-add tree: 16
//           horizontal reductions cost 20-25% more per call at 1-64 sequences);
//   softmax per query head in fp32 (a vectorised exp, see exp16 in vec16.h);
//   pass 2: out_g = sum_t p[g][t] * v_t (values read once), accumulated in fp32.
// A step with fewer (sequence, KV head) pairs than twice the threads (batch 1: the default
// model has 3 KV heads, so 2 threads ran 2 against 1) splits each pair's keys into ranges
// and merges the ranges' partial softmaxes (ranges_per_pair, merge_partials): one
// sequence x 256 keys from DRAM went from 31.7 to 26.2 us.
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
#include <cstring>
#include <type_traits>
#include <vector>

#include "paged_attention.h"
#include "vec16.h"

namespace qfid_cpu {
namespace {

// The largest of row[0..len): 16 lanes at a time (a scalar max chain, one dependent
// `vmaxss` per score, took 12% of a call at 256 keys). Exact, as any max is; a NaN score
// makes the output NaN whichever peak is taken.
inline float row_max(const float* row, int64_t len) {
  __m512 top = _mm512_set1_ps(-INFINITY);
  int64_t t = 0;
  for (; t + 16 <= len; t += 16) top = _mm512_max_ps(top, _mm512_loadu_ps(row + t));
  if (t < len) {
    const __mmask16 m = static_cast<__mmask16>((1u << (len - t)) - 1);
    top = _mm512_mask_max_ps(top, m, top, _mm512_maskz_loadu_ps(m, row + t));
  }
  return _mm512_reduce_max_ps(top);
}

// row[t] = e^(row[t] - peak) for t < len; returns their sum.
inline float exp_and_sum(float* row, int64_t len, float peak) {
  const __m512 vpeak = _mm512_set1_ps(peak);
  __m512 acc = _mm512_setzero_ps();
  int64_t t = 0;
  for (; t + 16 <= len; t += 16) {
    const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(row + t), vpeak));
    _mm512_storeu_ps(row + t, e);
    acc = _mm512_add_ps(acc, e);
  }
  if (t < len) {
    const __mmask16 m = static_cast<__mmask16>((1u << (len - t)) - 1);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, row + t), vpeak));
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

// How many tokens ahead of the one in use each pass prefetches its cache rows. A
// sequence's blocks are scattered, so the hardware prefetcher restarts at every block;
// one block (16 tokens) ahead left a call at ~20 GB/s from DRAM, latency-bound. 48 tokens
// ahead, with each pass's first 48 rows asked for before it starts, took 32 sequences x
// 256 keys from 320 to 254-264 us and 64 x 512 from 1313-1325 to 1052-1056 (the default
// model's heads, same run; 64 and 96 tokens were no better).
constexpr int64_t kPrefetchTokens = 48;

template <typename T>
inline void prefetch_row(const T* row, int64_t dim) {
  for (int64_t b = 0; b < dim * static_cast<int64_t>(sizeof(T)); b += 64)
    _mm_prefetch(reinterpret_cast<const char*>(row) + b, _MM_HINT_T0);
}

// Rows [from, to) of one head's cache, asked for ahead of their use.
template <typename T, typename Index>
inline void prefetch_rows(const T* head, const Index* table, int64_t from, int64_t to, const Shape& s) {
  for (int64_t t = from; t < to; ++t) prefetch_row(token_row(head, table, t, s), s.dim);
}

// The sums of 16 vectors' lanes, as one vector (lane j = sum of a[j]): a transpose-and-add
// tree (46 instructions) instead of 16 horizontal reductions (~9 each).
inline __m512 sum_lanes16(const __m512* a) {
  __m512 s[8], u[4];
  for (int i = 0; i < 8; ++i)   // 128-bit lanes 0-1: a[i] folded to 8 partials; 2-3: a[i + 8]
    s[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[i], a[i + 8], 0x44), _mm512_shuffle_f32x4(a[i], a[i + 8], 0xEE));
  for (int i = 0; i < 4; ++i)   // lanes: a[i], a[i + 8], a[i + 4], a[i + 12], 4 partials each
    u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(s[i], s[i + 4], 0x88), _mm512_shuffle_f32x4(s[i], s[i + 4], 0xDD));
  const __m512 v0 = _mm512_add_ps(_mm512_unpacklo_ps(u[0], u[1]), _mm512_unpackhi_ps(u[0], u[1]));
  const __m512 v1 = _mm512_add_ps(_mm512_unpacklo_ps(u[2], u[3]), _mm512_unpackhi_ps(u[2], u[3]));
  // lane L, element e: the total of u[e]'s lane L, i.e. of a[e], a[e + 8], a[e + 4], a[e + 12]
  const __m512 w = _mm512_add_ps(_mm512_shuffle_ps(v0, v1, 0x44), _mm512_shuffle_ps(v0, v1, 0xEE));
  return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15), w);
}

// scores[h][t] = scale * q_h . k_t for HG query heads and every key t < len: each key is
// read (and, but for the bf16 path, converted) once for all HG heads. bf16 keys and
// queries go straight into `vdpbf16ps` (products exact in fp32, as after converting);
// other dtypes are converted to fp32 and FMA'd with the pre-scaled query.
template <typename T, typename Index, int VECS, int HG>
void head_scores(const T* q, const T* k_head, const Index* table, int64_t t0, int64_t len, const Shape& s,
                 float scale, float* scores) {
  const int64_t n = len - t0;   // keys t0 .. len - 1; scores[h * n + t - t0]
  constexpr bool kDot = std::is_same<T, at::BFloat16>::value && VECS % 2 == 0;
  if constexpr (kDot) {
    __m512bh qb[HG][VECS / 2];
    for (int h = 0; h < HG; ++h)
      for (int v = 0; v < VECS / 2; ++v) qb[h][v] = (__m512bh)_mm512_loadu_si512(q + h * s.dim + v * 32);
    int64_t t = t0;
    prefetch_rows(k_head, table, t0, std::min(len, t0 + kPrefetchTokens), s);
    for (; t + 16 <= len; t += 16) {   // 16 keys per head at a time, their sums in one tree
      const T* keys[16];
      for (int j = 0; j < 16; ++j) keys[j] = token_row(k_head, table, t + j, s);
      prefetch_rows(k_head, table, t + kPrefetchTokens, std::min(len, t + kPrefetchTokens + 16), s);
      for (int h = 0; h < HG; ++h) {
        __m512 acc[16];
        for (int j = 0; j < 16; ++j) {
          acc[j] = _mm512_setzero_ps();
          for (int v = 0; v < VECS / 2; ++v)
            acc[j] = _mm512_dpbf16_ps(acc[j], (__m512bh)_mm512_loadu_si512(keys[j] + v * 32), qb[h][v]);
        }
        _mm512_storeu_ps(scores + h * n + t - t0, _mm512_mul_ps(sum_lanes16(acc), _mm512_set1_ps(scale)));
      }
    }
    for (; t < len; ++t) {
      const T* key = token_row(k_head, table, t, s);
      __m512 acc[HG];
      for (int h = 0; h < HG; ++h) acc[h] = _mm512_setzero_ps();
      for (int v = 0; v < VECS / 2; ++v) {
        const __m512bh k = (__m512bh)_mm512_loadu_si512(key + v * 32);
        for (int h = 0; h < HG; ++h) acc[h] = _mm512_dpbf16_ps(acc[h], k, qb[h][v]);
      }
      for (int h = 0; h < HG; ++h) scores[h * n + t - t0] = _mm512_reduce_add_ps(acc[h]) * scale;
    }
  } else {
    __m512 qv[HG][VECS];
    for (int h = 0; h < HG; ++h)
      for (int v = 0; v < VECS; ++v) qv[h][v] = _mm512_mul_ps(load16(q + h * s.dim + v * 16), _mm512_set1_ps(scale));
    for (int64_t t = t0; t < len; ++t) {
      const T* key = token_row(k_head, table, t, s);
      __m512 acc[HG];
      for (int h = 0; h < HG; ++h) acc[h] = _mm512_setzero_ps();
      for (int v = 0; v < VECS; ++v) {
        const __m512 k = load16(key + v * 16);
        for (int h = 0; h < HG; ++h) acc[h] = _mm512_fmadd_ps(qv[h][v], k, acc[h]);
      }
      for (int h = 0; h < HG; ++h) scores[h * n + t - t0] = _mm512_reduce_add_ps(acc[h]);
    }
  }
}

// HG consecutive query heads (from `first`) of one (sequence, KV head) pair over keys
// [t0, len): scores, softmax per head in fp32, then out_h = sum_t p[h][t] v_t with each
// value converted once. With `partial` (a range of a split pair, see run) the head's
// peak score, its sum of e^(score - peak) and the unnormalised sum go there instead,
// 2 + dim floats per head, for merge_partials.
template <typename T, typename Index, int VECS, int HG>
void attend_heads(const T* q, const T* k_head, const T* v_head, const Index* table, int64_t t0, int64_t len, T* out,
                  const Shape& s, int64_t first, float scale, std::vector<float>& scores, float* partial) {
  const int64_t n = len - t0;
  scores.resize(static_cast<size_t>(HG * n));
  float* rows = scores.data();
  prefetch_rows(v_head, table, t0, std::min(len, t0 + kPrefetchTokens), s);   // pass 2's first values
  head_scores<T, Index, VECS, HG>(q + first * s.dim, k_head, table, t0, len, s, scale, rows);
  float peak[HG], sum[HG];
  for (int h = 0; h < HG; ++h) {
    float* row = rows + h * n;
    peak[h] = row_max(row, n);
    sum[h] = exp_and_sum(row, n, peak[h]);
  }
  __m512 acc[HG][VECS];
  for (int h = 0; h < HG; ++h)
    for (int v = 0; v < VECS; ++v) acc[h][v] = _mm512_setzero_ps();
  for (int64_t t = t0; t < len; ++t) {
    const T* value = token_row(v_head, table, t, s);
    if (t + kPrefetchTokens < len) prefetch_row(token_row(v_head, table, t + kPrefetchTokens, s), s.dim);
    __m512 p[HG];
    for (int h = 0; h < HG; ++h) p[h] = _mm512_set1_ps(rows[h * n + t - t0]);
    for (int v = 0; v < VECS; ++v) {
      const __m512 x = load16(value + v * 16);
      for (int h = 0; h < HG; ++h) acc[h][v] = _mm512_fmadd_ps(p[h], x, acc[h][v]);
    }
  }
  for (int h = 0; h < HG; ++h) {
    if (partial) {
      float* part = partial + h * (2 + s.dim);
      part[0] = peak[h], part[1] = sum[h];
      for (int v = 0; v < VECS; ++v) _mm512_storeu_ps(part + 2 + v * 16, acc[h][v]);
    } else {
      const float inv_sum = 1.f / sum[h];
      for (int v = 0; v < VECS; ++v)
        store16(out + (first + h) * s.dim + v * 16, _mm512_mul_ps(acc[h][v], _mm512_set1_ps(inv_sum)));
    }
  }
}

// One (sequence, KV head) pair: its query heads in sub-groups of up to kMaxHeads (as many
// as keep every accumulator in registers for this head_dim), so K and V come from DRAM
// once per sub-group and are converted once per sub-group rather than once per head.
template <typename T, typename Index, int VECS>
void attend_one(const T* q, const T* k_cache, const T* v_cache, const Index* table, int64_t t0, int64_t len,
                T* out, const Shape& s, int64_t kv_head, float scale, std::vector<float>& scores, float* partial) {
  constexpr int kMaxHeads = VECS <= 4 ? 4 : VECS <= 8 ? 2 : 1;
  const int64_t group = s.heads / s.kv_heads;
  const int64_t head_stride = s.num_blocks * s.block_size * s.dim;
  const T* k_head = k_cache + kv_head * head_stride;
  const T* v_head = v_cache + kv_head * head_stride;
  for (int64_t first = kv_head * group; first < (kv_head + 1) * group;) {
    const int64_t n = std::min<int64_t>(kMaxHeads, (kv_head + 1) * group - first);
    float* part = partial ? partial + (first - kv_head * group) * (2 + s.dim) : nullptr;
    if (n >= 4) {
      if constexpr (kMaxHeads >= 4)
        attend_heads<T, Index, VECS, 4>(q, k_head, v_head, table, t0, len, out, s, first, scale, scores, part);
    } else if (n == 3) {
      if constexpr (kMaxHeads >= 3)
        attend_heads<T, Index, VECS, 3>(q, k_head, v_head, table, t0, len, out, s, first, scale, scores, part);
    } else if (n == 2) {
      if constexpr (kMaxHeads >= 2)
        attend_heads<T, Index, VECS, 2>(q, k_head, v_head, table, t0, len, out, s, first, scale, scores, part);
    } else {
      attend_heads<T, Index, VECS, 1>(q, k_head, v_head, table, t0, len, out, s, first, scale, scores, part);
    }
    first += n;
  }
}

// out for one (sequence, KV head) pair from its `parts` ranges' partials: with M the
// largest peak, out_h = sum_p e^(peak_p - M) acc_p / sum_p e^(peak_p - M) sum_p.
template <typename T>
void merge_partials(const float* partials, int64_t parts, int64_t group, int64_t dim, int64_t first_head, T* out) {
  const int64_t item = group * (2 + dim);
  std::vector<float> acc(static_cast<size_t>(dim));
  for (int64_t g = 0; g < group; ++g) {
    float top = -INFINITY;
    for (int64_t p = 0; p < parts; ++p) top = std::max(top, partials[p * item + g * (2 + dim)]);
    float total = 0.f;
    std::fill(acc.begin(), acc.end(), 0.f);
    for (int64_t p = 0; p < parts; ++p) {
      const float* part = partials + p * item + g * (2 + dim);
      const float w = std::exp(part[0] - top);
      total += w * part[1];
      for (int64_t d = 0; d < dim; ++d) acc[d] += w * part[2 + d];
    }
    const __m512 inv_total = _mm512_set1_ps(1.f / total);
    for (int64_t d = 0; d < dim; d += 16)
      store16(out + (first_head + g) * dim + d, _mm512_mul_ps(_mm512_loadu_ps(acc.data() + d), inv_total));
  }
}

// Ranges of one pair's keys per work item: with fewer (sequence, KV head) pairs than
// twice the threads (a batch-1 step of a model with 3 KV heads on 2 threads: 2 against 1),
// each pair's keys are split into ranges that fill the threads evenly, each at least
// kMinRangeKeys long, and the ranges are merged after (as flash-decoding does on GPUs).
// The split depends on the thread count, so such a step's output can differ in its last
// bits between thread counts (as torch's own reductions do); one process always gives the
// same result.
constexpr int64_t kMinRangeKeys = 32;

int64_t ranges_per_pair(const Shape& s, const int64_t* lens) {
  const int64_t pairs = s.seqs * s.kv_heads, threads = at::get_num_threads();
  if (pairs >= 2 * threads) return 1;
  int64_t shortest = lens[0];
  for (int64_t i = 1; i < s.seqs; ++i) shortest = std::min(shortest, lens[i]);
  const int64_t wanted = (2 * threads + pairs - 1) / pairs;
  return std::max<int64_t>(1, std::min(wanted, shortest / kMinRangeKeys));
}

// Where each thread's share of the work items (pair, range) starts, shares of contiguous
// items with about equal keys each (first.back() is the item count). at::parallel_for cut
// the items into equal counts, and a step's sequences differ in length (a bursty decode
// step: 32 to 480 keys), so one thread could hold most of the keys and the other wait.
// Items are taken in the same order and computed the same way whichever thread runs them.
// 35 sequences of 32-480 keys from DRAM (bench/paged_attention.py), fresh processes
// alternating: Llama-3-8B's heads 1474-1923 -> 1341-1555 us; the default model's within noise.
constexpr int64_t kItemKeys = 16;   // an item's fixed cost (softmax, output) in keys' worth

std::vector<int64_t> split_by_keys(const Shape& s, const int64_t* lens, int64_t parts) {
  const int64_t items = s.seqs * s.kv_heads * parts;
  const int64_t shares = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), items));
  auto cost = [&](int64_t i) { return lens[i / parts / s.kv_heads] / parts + kItemKeys; };
  int64_t total = 0;
  for (int64_t i = 0; i < items; ++i) total += cost(i);
  std::vector<int64_t> first(static_cast<size_t>(shares + 1), items);
  first[0] = 0;
  int64_t share = 1, done = 0;
  for (int64_t i = 0; i < items && share < shares; ++i) {
    done += cost(i);
    while (share < shares && done * shares >= total * share) first[share++] = i + 1;
  }
  return first;
}

template <typename T, typename Index, int VECS>
void run(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& tables,
         const at::Tensor& lens, const at::Tensor& out, const Shape& s, float scale) {
  const T* qp = q.data_ptr<T>();
  const T* kp = k_cache.data_ptr<T>();
  const T* vp = v_cache.data_ptr<T>();
  const Index* tp = tables.data_ptr<Index>();
  const int64_t* lp = lens.data_ptr<int64_t>();
  T* op = out.data_ptr<T>();
  const int64_t pairs = s.seqs * s.kv_heads, group = s.heads / s.kv_heads;
  const int64_t parts = ranges_per_pair(s, lp), item_floats = group * (2 + s.dim);
  std::vector<float> partials(parts > 1 ? static_cast<size_t>(pairs * parts * item_floats) : 0);
  const std::vector<int64_t> first = split_by_keys(s, lp, parts);
  at::parallel_for(0, static_cast<int64_t>(first.size()) - 1, 1, [&](int64_t share0, int64_t share1) {
    std::vector<float> scores;
    for (int64_t i = first[share0]; i < first[share1]; ++i) {
      const int64_t pair = i / parts, part = i % parts;
      const int64_t seq = pair / s.kv_heads, kv_head = pair % s.kv_heads, len = lp[seq];
      const int64_t t0 = part * len / parts, t1 = (part + 1) * len / parts;
      attend_one<T, Index, VECS>(qp + seq * s.heads * s.dim, kp, vp, tp + seq * s.max_blocks, t0, t1,
                                 op + seq * s.heads * s.dim, s, kv_head, scale, scores,
                                 parts > 1 ? partials.data() + i * item_floats : nullptr);
    }
  });
  if (parts == 1) return;
  for (int64_t pair = 0; pair < pairs; ++pair) {
    const int64_t seq = pair / s.kv_heads, kv_head = pair % s.kv_heads;
    merge_partials(partials.data() + pair * parts * item_floats, parts, group, s.dim, kv_head * group,
                   op + seq * s.heads * s.dim);
  }
}

}  // namespace

void check_context_lens(const at::Tensor& lens, int64_t max_tokens) {
  // A plain loop: two ATen reductions and their .item() cost more than a decode step's
  // attention at batch 1 (~3 us of a ~9 us call).
  const int64_t* lens_p = lens.data_ptr<int64_t>();
  for (int64_t i = 0; i < lens.numel(); ++i)
    TORCH_CHECK(lens_p[i] >= 1 && lens_p[i] <= max_tokens,
                "paged_decode_attention: context lengths must be in [1, max_blocks * block_size]");
}

void decode_attention_rows(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                           const at::Tensor& tables, const at::Tensor& lens, const at::Tensor& out, double scale) {
  const Shape s{q.size(0), q.size(1), k_cache.size(0), k_cache.size(1), k_cache.size(2), q.size(2), tables.size(1)};
  const float sc = static_cast<float>(scale);
  auto dispatch_index = [&](auto tag) {
    using T = decltype(tag);
    TORCH_CHECK(tables.scalar_type() == at::kInt || tables.scalar_type() == at::kLong,
                "paged_decode_attention: block tables must be int32 or int64");
    const bool i32 = tables.scalar_type() == at::kInt;
    auto go = [&](auto vecs) {
      constexpr int V = decltype(vecs)::value;
      if (i32) run<T, int32_t, V>(q, k_cache, v_cache, tables, lens, out, s, sc);
      else run<T, int64_t, V>(q, k_cache, v_cache, tables, lens, out, s, sc);
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
  for_dtype(q.scalar_type(), "paged_decode_attention", dispatch_index);
}

void check_slots(const at::Tensor& slot, int64_t slots) {
  const int64_t* sp = slot.data_ptr<int64_t>();
  for (int64_t t = 0; t < slot.numel(); ++t)
    TORCH_CHECK(sp[t] >= 0 && sp[t] < slots, "store_kv_: slot ", sp[t], " is outside the cache");
}

void store_kv_rows(const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& slot) {
  const int64_t heads = k_cache.size(0), slots = k_cache.size(1) * k_cache.size(2), D = k_cache.size(3);
  const int64_t* sp = slot.data_ptr<int64_t>();
  const int64_t bytes = D * k.element_size();
  auto* kc = static_cast<char*>(k_cache.data_ptr());
  auto* vc = static_cast<char*>(v_cache.data_ptr());
  const auto* kp = static_cast<const char*>(k.data_ptr());
  const auto* vp = static_cast<const char*>(v.data_ptr());
  const int64_t k_row = k.stride(0) * k.element_size(), v_row = v.stride(0) * v.element_size();
  at::parallel_for(0, slot.numel(), 256, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t dst = (h * slots + sp[t]) * bytes;
        std::memcpy(kc + dst, kp + t * k_row + h * bytes, bytes);
        std::memcpy(vc + dst, vp + t * v_row + h * bytes, bytes);
      }
  });
}

namespace {

at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                  const at::Tensor& block_tables, const at::Tensor& context_lens, double scale) {
  c10::InferenceMode guard;
  TORCH_CHECK(q.dim() == 3 && k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes(),
              "paged_decode_attention: q [seqs, heads, dim], caches [kv_heads, blocks, block_size, dim]");
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() && q.scalar_type() == v_cache.scalar_type(),
              "paged_decode_attention: q and caches must share a dtype");
  const int64_t heads = q.size(1), kv_heads = k_cache.size(0), dim = q.size(2);
  TORCH_CHECK(k_cache.size(3) == dim && dim % 16 == 0, "paged_decode_attention: head_dim must match");
  TORCH_CHECK(heads % kv_heads == 0, "paged_decode_attention: heads must be a multiple of KV heads");
  TORCH_CHECK(block_tables.dim() == 2 && block_tables.size(0) == q.size(0) && context_lens.numel() == q.size(0),
              "paged_decode_attention: one block table row and one length per sequence");
  at::Tensor qc = q.contiguous(), kc = k_cache.contiguous(), vc = v_cache.contiguous();
  at::Tensor tables = block_tables.contiguous();
  at::Tensor lens = context_lens.to(at::kLong).contiguous();
  check_context_lens(lens, block_tables.size(1) * k_cache.size(2));
  at::Tensor out = at::empty_like(qc);
  decode_attention_rows(qc, kc, vc, tables, lens, out, scale);
  return out;
}

// Write this step's keys and values [T, kv_heads, D] (dense heads, any row stride: views
// of the fused qkv output) into their cache slots. torch's index_copy_ on the cache's
// [kv_heads, slots, D] view took ~0.2 ms per layer for 64 decode rows; this is a copy of
// T * kv_heads rows.
void store_kv_(const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& k, const at::Tensor& v,
               const at::Tensor& slot_mapping) {
  c10::InferenceMode guard;
  TORCH_CHECK(k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes() && k_cache.is_contiguous() &&
              v_cache.is_contiguous(), "store_kv_: caches must be contiguous [kv_heads, blocks, block_size, dim]");
  const int64_t heads = k_cache.size(0), slots = k_cache.size(1) * k_cache.size(2), D = k_cache.size(3);
  TORCH_CHECK(k.dim() == 3 && v.sizes() == k.sizes() && k.size(1) == heads && k.size(2) == D &&
              k.stride(2) == 1 && k.stride(1) == D && v.stride(2) == 1 && v.stride(1) == D,
              "store_kv_: k and v must be [tokens, kv_heads, dim] with dense heads");
  TORCH_CHECK(k.scalar_type() == k_cache.scalar_type() && v.scalar_type() == k_cache.scalar_type(),
              "store_kv_: k, v and caches must share a dtype");
  const at::Tensor slot = slot_mapping.to(at::kLong).contiguous();
  TORCH_CHECK(slot.numel() == k.size(0), "store_kv_: one slot per token");
  check_slots(slot, slots);
  store_kv_rows(k_cache, v_cache, k, v, slot);
}

}  // namespace
}  // namespace qfid_cpu

TORCH_LIBRARY_FRAGMENT(qfid_cpu, m) {
  m.def("paged_decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, "
        "Tensor context_lens, float scale) -> Tensor",
        &qfid_cpu::paged_decode_attention);
  m.def("store_kv_(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor k, Tensor v, Tensor slot_mapping) -> ()",
        &qfid_cpu::store_kv_);
}
