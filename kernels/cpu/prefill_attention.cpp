// Paged causal prefill attention for bf16 models on the CPU runtime
// (op `qfid_cpu::paged_prefill_attention`).
//
// Why: torch's CPU flash-attention kernel ran a step's prefill chunks (a few dozen to a
// few hundred tokens each, head_dim 64, grouped-query heads) at ~35 GFLOPS on this Zen 4,
// a fifth of a 2,048-token prefill step. Attention is two matmuls; here both run on the
// register-blocked `vdpbf16ps` core of the dense bf16 GEMM (bf16_tile.h) at its ~200
// GFLOPS per core:
//   1. the chunk's visible keys are gathered from their cache blocks into the GEMM's tile
//      layout (keys as the 64-row "weights", head dims as the inputs), once per KV head;
//   2. S = Q K^T for a block of queries of each query head sharing that KV head (fp32);
//   3. causal softmax per row in fp32; probabilities rounded to bf16 for the second matmul
//      (as the flash kernel does), and their sum taken over the rounded values;
//   4. O = P V with V^T gathered into tiles (head dims as the rows, keys as the inputs),
//      then divided by the row sum and rounded to bf16.
// Work items are (chunk, KV head, block of 64 queries); a block only reads the keys its
// last query can see, so causal masking also halves the work.
//
// Layout: q and out [T, heads, D] (the step's prefill rows, chunks back to back); caches
// [kv_heads, num_blocks, block_size, D] (the new keys already stored); per chunk its block
// table row, `starts` (tokens cached before the chunk) and `lens` (its rows). Query i of a
// chunk sits at position start + i and sees keys 0..start + i.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "bf16_tile.h"
#include "vec16.h"

namespace qfid_cpu {
namespace {

constexpr int64_t kQueryBlock = 64;

struct Geometry {
  int64_t heads, kv_heads, num_blocks, block_size, dim, max_blocks;
  int64_t dim_tiles() const { return (dim + kTileRows - 1) / kTileRows; }
};

struct Chunk {
  int64_t row0, start, len;
};

// Key rows 0..keys-1 of one KV head as tiles of 64 keys: word (t, p, r) = K[64t + r][2p..2p+1].
void pack_keys(const uint16_t* head, const int64_t* table, int64_t keys, int64_t padded, const Geometry& g,
               uint32_t* out) {
  const int64_t pairs = g.dim / 2;
  std::fill(out, out + padded * pairs, 0u);
  for (int64_t j = 0; j < keys; ++j) {
    const auto* row = reinterpret_cast<const uint32_t*>(
        head + (table[j / g.block_size] * g.block_size + j % g.block_size) * g.dim);
    uint32_t* tile = out + (j / kTileRows) * pairs * kTileRows + j % kTileRows;
    for (int64_t p = 0; p < pairs; ++p) tile[p * kTileRows] = row[p];
  }
}

// V^T as tiles of 64 head dims with keys as the inputs: element (dt, p, r, e) = V[2p + e][64dt + r].
void pack_values(const uint16_t* head, const int64_t* table, int64_t keys, int64_t padded, const Geometry& g,
                 uint16_t* out) {
  std::fill(out, out + g.dim_tiles() * kTileRows * padded, uint16_t(0));
  for (int64_t j = 0; j < keys; ++j) {
    const uint16_t* row = head + (table[j / g.block_size] * g.block_size + j % g.block_size) * g.dim;
    for (int64_t d = 0; d < g.dim; ++d)
      out[((d / kTileRows) * (padded / 2) + j / 2) * kPairElems + (d % kTileRows) * 2 + j % 2] = row[d];
  }
}

// Scores row -> bf16 probabilities (unnormalised, zero past `visible`); returns their sum.
float softmax_row(float* scores, int64_t visible, int64_t padded, float scale, uint16_t* probs) {
  const __m512 vscale = _mm512_set1_ps(scale);
  float peak = -INFINITY;
  for (int64_t j = 0; j < visible; ++j) peak = std::max(peak, scores[j]);
  const __m512 vpeak = _mm512_set1_ps(peak * scale);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t j = 0; j < padded; j += 16) {
    const int64_t left = visible - j;
    const __mmask16 mask = left >= 16 ? __mmask16(0xFFFF) : left <= 0 ? __mmask16(0) : __mmask16((1u << left) - 1);
    const __m512 s = _mm512_fmsub_ps(_mm512_loadu_ps(scores + j), vscale, vpeak);
    const __m512 p = _mm512_maskz_mov_ps(mask, round_as<at::BFloat16>(exp16(s)));
    sum = _mm512_add_ps(sum, p);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(probs + j), _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(p), 16)));
  }
  return _mm512_reduce_add_ps(sum);
}

struct Scratch {
  std::vector<uint32_t> keys;
  std::vector<uint16_t> values, probs;
  std::vector<float> scores, outs, sums;
};

// One (chunk, KV head, query block): every query head of the group against the block's keys.
void attend_block(const uint16_t* q, const uint16_t* k_cache, const uint16_t* v_cache, const int64_t* table,
                  const Chunk& c, int64_t kv_head, int64_t i0, const Geometry& g, float scale, uint16_t* out,
                  Scratch& s) {
  const int64_t rows = std::min(kQueryBlock, c.len - i0);
  const int64_t keys = c.start + i0 + rows;
  const int64_t padded = (keys + kTileRows - 1) / kTileRows * kTileRows;
  const int64_t dpad = g.dim_tiles() * kTileRows;
  const int64_t head_stride = g.num_blocks * g.block_size * g.dim, ldq = g.heads * g.dim;
  s.keys.resize(padded * g.dim / 2);
  s.values.resize(dpad * padded);
  s.scores.resize(rows * padded);
  s.probs.resize(rows * padded);
  s.outs.resize(rows * dpad);
  s.sums.resize(rows);
  pack_keys(k_cache + kv_head * head_stride, table, keys, padded, g, s.keys.data());
  pack_values(v_cache + kv_head * head_stride, table, keys, padded, g, s.values.data());
  const auto* key_tiles = reinterpret_cast<const uint16_t*>(s.keys.data());
  const int64_t group = g.heads / g.kv_heads;
  for (int64_t member = 0; member < group; ++member) {
    const int64_t head = kv_head * group + member;
    const uint16_t* qh = q + (c.row0 + i0) * ldq + head * g.dim;
    for (int64_t t = 0; t < padded / kTileRows; ++t)
      tile_times_rows(key_tiles + t * g.dim * kTileRows, qh, ldq, g.dim, rows, s.scores.data() + t * kTileRows, padded);
    for (int64_t r = 0; r < rows; ++r)
      s.sums[r] = softmax_row(s.scores.data() + r * padded, c.start + i0 + r + 1, padded, scale, s.probs.data() + r * padded);
    for (int64_t dt = 0; dt < g.dim_tiles(); ++dt)
      tile_times_rows(s.values.data() + dt * kTileRows * padded, s.probs.data(), padded, padded, rows,
                      s.outs.data() + dt * kTileRows, dpad);
    for (int64_t r = 0; r < rows; ++r) {
      const __m512 inv = _mm512_set1_ps(1.f / s.sums[r]);
      auto* dst = reinterpret_cast<at::BFloat16*>(out + (c.row0 + i0 + r) * ldq + head * g.dim);
      for (int64_t d = 0; d < g.dim; d += 16) store16(dst + d, _mm512_mul_ps(_mm512_loadu_ps(s.outs.data() + r * dpad + d), inv));
    }
  }
}

at::Tensor paged_prefill_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                   const at::Tensor& block_tables, const at::Tensor& starts, const at::Tensor& lens,
                                   double scale) {
  c10::InferenceMode guard;
  TORCH_CHECK(q.dim() == 3 && k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes(),
              "paged_prefill_attention: q [rows, heads, dim], caches [kv_heads, blocks, block_size, dim]");
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 && k_cache.scalar_type() == at::kBFloat16 &&
              v_cache.scalar_type() == at::kBFloat16, "paged_prefill_attention: q and caches must be bfloat16");
  const Geometry g{q.size(1), k_cache.size(0), k_cache.size(1), k_cache.size(2), q.size(2), block_tables.size(1)};
  TORCH_CHECK(k_cache.size(3) == g.dim && g.dim % 16 == 0, "paged_prefill_attention: head_dim must match and be a multiple of 16");
  TORCH_CHECK(g.heads % g.kv_heads == 0, "paged_prefill_attention: heads must be a multiple of KV heads");
  const at::Tensor tables = block_tables.to(at::kLong).contiguous();
  const at::Tensor st = starts.to(at::kLong).contiguous(), ln = lens.to(at::kLong).contiguous();
  const int64_t chunks = tables.size(0);
  TORCH_CHECK(st.numel() == chunks && ln.numel() == chunks, "paged_prefill_attention: one start and length per chunk");
  std::vector<Chunk> cs;
  std::vector<int64_t> items;  // (chunk, query block) pairs, flattened
  int64_t row0 = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    const Chunk chunk{row0, st.data_ptr<int64_t>()[c], ln.data_ptr<int64_t>()[c]};
    TORCH_CHECK(chunk.start >= 0 && chunk.len >= 1 && chunk.start + chunk.len <= g.max_blocks * g.block_size,
                "paged_prefill_attention: chunk ", c, " runs past its block table");
    for (int64_t i0 = 0; i0 < chunk.len; i0 += kQueryBlock) items.push_back(c * (int64_t(1) << 32) + i0);
    cs.push_back(chunk);
    row0 += chunk.len;
  }
  TORCH_CHECK(row0 == q.size(0), "paged_prefill_attention: chunk lengths must add up to q's rows");
  const at::Tensor qc = q.contiguous(), kc = k_cache.contiguous(), vc = v_cache.contiguous();
  at::Tensor out = at::empty_like(qc);
  const auto* qp = reinterpret_cast<const uint16_t*>(qc.data_ptr());
  const auto* kp = reinterpret_cast<const uint16_t*>(kc.data_ptr());
  const auto* vp = reinterpret_cast<const uint16_t*>(vc.data_ptr());
  auto* op = reinterpret_cast<uint16_t*>(out.data_ptr());
  const int64_t* tp = tables.data_ptr<int64_t>();
  const int64_t n_items = static_cast<int64_t>(items.size()) * g.kv_heads;
  at::parallel_for(0, n_items, 1, [&](int64_t b, int64_t e) {
    Scratch scratch;
    for (int64_t i = b; i < e; ++i) {
      const int64_t item = items[i / g.kv_heads], c = item >> 32, i0 = item & 0xFFFFFFFF;
      attend_block(qp, kp, vp, tp + c * g.max_blocks, cs[c], i % g.kv_heads, i0, g, float(scale), op, scratch);
    }
  });
  return out;
}

}  // namespace
}  // namespace qfid_cpu

TORCH_LIBRARY_FRAGMENT(qfid_cpu, m) {
  m.def("paged_prefill_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, Tensor starts, "
        "Tensor lens, float scale) -> Tensor",
        &qfid_cpu::paged_prefill_attention);
}
