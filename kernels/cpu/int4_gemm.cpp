// AVX-512 BF16 W4A16 matmul for the CPU runtime (op `qfid_cpu::int4_gemm`).
//
// Why our own kernel: a batch-1 decode step is a stream over the weights, and torch's
// built-in int4 CPU kernel leaves a large part of the memory bandwidth unused on Zen 4.
// Here a nibble q becomes the bf16 number 128 + q with a single OR (0x4300 | q), so the
// inner loop is zero-extend, mask/shift, OR and `vdpbf16ps`: 64 multiply-adds in about
// six instructions. The bias 128 and the zero point come out once per group:
//   sum_k x_k (q_k - z) s  =  s * (sum_k x_k (128 + q_k)  -  (128 + z) * sum_k x_k)
// with sum_k x_k computed here once per row and group.
//
// Packed layout (built by qfid/kernels/cpu_layout.py): tiles of 64 output rows; in a tile,
// per group of G inputs: G/4 chunks of 128 bytes, then 64 fp16 scales, then 64 uint8 zero
// codes, so one tile is one sequential stream. In chunk c, sub-block b (rows 16b..16b+15)
// is 32 bytes; byte j holds row 16b + j/2 with input 4c + j%2 in the low nibble and input
// 4c + 2 + j%2 in the high nibble: exactly the (k, k+1) pairs `vdpbf16ps` consumes.
//
// Many bf16 rows (more than four) are compute-bound rather than a stream: each tile is then
// dequantized once into the dense bf16 GEMM's packed layout (`dequant_tile`) and every row
// runs over it on that GEMM's register-blocked core (bf16_tile.h), about twice the speed of
// sweeping the rows over the unpacked codes four at a time.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "activations.h"
#include "bf16_tile.h"
#include "int4_gemm.h"

namespace qfid_cpu {
namespace {

constexpr int64_t kChunkBytes = 128;
constexpr int kMaxRowsDirect = 4;  // batch rows that keep their accumulators in registers

struct Int4Acts {
  const uint16_t* xh;  // [M, K] bf16 bits
  const uint16_t* xl;  // [M, K] bf16 bits, or nullptr
  const float* sumx;   // [M, K / G]
  int64_t K, G, ngroups;
};

inline int64_t group_bytes(int64_t G) { return G * 32 + 3 * kTileRows; }

// 128 packed bytes -> 8 registers of 32 bf16 weights: w[2b] holds inputs (4c, 4c+1) and
// w[2b+1] inputs (4c+2, 4c+3) of rows 16b..16b+15.
inline void unpack_chunk(const uint8_t* p, __m512i* w) {
  const __m512i low = _mm512_set1_epi16(0x000F);
  const __m512i bias = _mm512_set1_epi16(0x4300);  // bf16 128.0; OR-ing q gives 128 + q
  for (int b = 0; b < 4; ++b) {
    __m512i v = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)(p + 32 * b)));
    w[2 * b] = _mm512_ternarylogic_epi32(v, low, bias, 0xEA);  // (v & low) | bias
    w[2 * b + 1] = _mm512_or_si512(_mm512_srli_epi16(v, 4), bias);
  }
}

// S accumulator sets per row: with a single batch row the two halves of a chunk go to
// separate registers so `vdpbf16ps` latency does not serialise the loop.
template <int MB, int S, bool kLo>
inline void accumulate(const __m512i* w, const Int4Acts& a, int64_t m0, int64_t k,
                       __m512 (*acc)[S][4]) {
  for (int m = 0; m < MB; ++m) {
    const uint16_t* xh = a.xh + (m0 + m) * a.K + k;
    const __m512bh h0 = bcast_pair(xh), h1 = bcast_pair(xh + 2);
    for (int b = 0; b < 4; ++b) {
      acc[m][0][b] = dot(acc[m][0][b], w[2 * b], h0);
      acc[m][S - 1][b] = dot(acc[m][S - 1][b], w[2 * b + 1], h1);
    }
    if (kLo) {
      const uint16_t* xl = a.xl + (m0 + m) * a.K + k;
      const __m512bh l0 = bcast_pair(xl), l1 = bcast_pair(xl + 2);
      for (int b = 0; b < 4; ++b) {
        acc[m][0][b] = dot(acc[m][0][b], w[2 * b], l0);
        acc[m][S - 1][b] = dot(acc[m][S - 1][b], w[2 * b + 1], l1);
      }
    }
  }
}

// y[m, rows] += s * acc - s * (128 + z) * sum(x over the group).
template <int MB, int S>
inline void fold_group(__m512 (*acc)[S][4], const uint8_t* gp, const Int4Acts& a, int64_t m0,
                       int64_t g, float* y, int64_t ldy) {
  const uint16_t* sc = (const uint16_t*)(gp + a.G * 32);
  const uint8_t* zp = gp + a.G * 32 + 2 * kTileRows;
  for (int b = 0; b < 4; ++b) {
    const __m512 s = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(sc + 16 * b)));
    const __m512 z = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(zp + 16 * b))));
    const __m512 sz = _mm512_mul_ps(s, _mm512_add_ps(z, _mm512_set1_ps(128.0f)));
    for (int m = 0; m < MB; ++m) {
      __m512 total = acc[m][0][b];
      if (S == 2) total = _mm512_add_ps(total, acc[m][1][b]);
      float* out = y + (m0 + m) * ldy + 16 * b;
      __m512 v = _mm512_fmadd_ps(s, total, _mm512_loadu_ps(out));
      v = _mm512_fnmadd_ps(sz, _mm512_set1_ps(a.sumx[(m0 + m) * a.ngroups + g]), v);
      _mm512_storeu_ps(out, v);
    }
  }
}

// Few batch rows: unpack each chunk straight into registers and use it at once.
template <int MB, bool kLo>
void tile_direct(const uint8_t* tile, const Int4Acts& a, float* y, int64_t ldy) {
  constexpr int S = MB == 1 ? 2 : 1;
  const int64_t gb = group_bytes(a.G);
  for (int64_t g = 0; g < a.ngroups; ++g) {
    const uint8_t* gp = tile + g * gb;
    __m512 acc[MB][S][4];
    zero(&acc[0][0][0], MB * S * 4);
    for (int64_t c = 0; c < a.G / 4; ++c) {
      prefetch_ahead(gp + c * kChunkBytes);
      __m512i w[8];
      unpack_chunk(gp + c * kChunkBytes, w);
      accumulate<MB, S, kLo>(w, a, 0, g * a.G + 4 * c, acc);
    }
    fold_group<MB, S>(acc, gp, a, 0, g, y, ldy);
  }
}

template <int MB, bool kLo>
void rows_from_buffer(const __m512i* buf, const uint8_t* gp, const Int4Acts& a, int64_t m0,
                      int64_t g, float* y, int64_t ldy) {
  __m512 acc[MB][1][4];
  zero(&acc[0][0][0], MB * 4);
  for (int64_t c = 0; c < a.G / 4; ++c) accumulate<MB, 1, kLo>(buf + 8 * c, a, m0, g * a.G + 4 * c, acc);
  fold_group<MB, 1>(acc, gp, a, m0, g, y, ldy);
}

// Many batch rows: unpack a group once into an L1-resident buffer, then sweep the batch
// over it four rows at a time.
template <bool kLo>
void tile_buffered(const uint8_t* tile, const Int4Acts& a, int64_t M, __m512i* buf, float* y,
                   int64_t ldy) {
  const int64_t gb = group_bytes(a.G);
  for (int64_t g = 0; g < a.ngroups; ++g) {
    const uint8_t* gp = tile + g * gb;
    for (int64_t c = 0; c < a.G / 4; ++c) {
      prefetch_ahead(gp + c * kChunkBytes);
      unpack_chunk(gp + c * kChunkBytes, buf + 8 * c);
    }
    for (int64_t m0 = 0; m0 < M; m0 += kMaxRowsDirect) {
      switch (std::min<int64_t>(kMaxRowsDirect, M - m0)) {
        case 1: rows_from_buffer<1, kLo>(buf, gp, a, m0, g, y, ldy); break;
        case 2: rows_from_buffer<2, kLo>(buf, gp, a, m0, g, y, ldy); break;
        case 3: rows_from_buffer<3, kLo>(buf, gp, a, m0, g, y, ldy); break;
        default: rows_from_buffer<4, kLo>(buf, gp, a, m0, g, y, ldy); break;
      }
    }
  }
}

template <bool kLo>
void run_tile(const uint8_t* tile, const Int4Acts& a, int64_t M, __m512i* buf, float* y, int64_t ldy) {
  switch (M) {
    case 1: tile_direct<1, kLo>(tile, a, y, ldy); break;
    case 2: tile_direct<2, kLo>(tile, a, y, ldy); break;
    case 3: tile_direct<3, kLo>(tile, a, y, ldy); break;
    case 4: tile_direct<4, kLo>(tile, a, y, ldy); break;
    default: tile_buffered<kLo>(tile, a, M, buf, y, ldy); break;
  }
}

// One tile dequantized to bf16, (q - z) * s rounded once (what the reference computes
// for bf16 activations), written in the dense bf16 GEMM's packed layout: the unpacked
// registers already hold the (k, k+1) pairs of 16 rows each, in that layout's order.
void dequant_tile(const uint8_t* tile, const Int4Acts& a, uint16_t* out) {
  const int64_t gb = group_bytes(a.G);
  const __m512i pair_lo = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
  const __m512i pair_hi = _mm512_add_epi32(pair_lo, _mm512_set1_epi32(8));
  for (int64_t g = 0; g < a.ngroups; ++g) {
    const uint8_t* gp = tile + g * gb;
    const uint16_t* sc = (const uint16_t*)(gp + a.G * 32);
    const uint8_t* zp = gp + a.G * 32 + 2 * kTileRows;
    __m512 s[4][2], z[4][2];
    for (int b = 0; b < 4; ++b) {
      const __m512 s16 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(sc + 16 * b)));
      const __m512 z16 = _mm512_add_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(zp + 16 * b)))),
                                       _mm512_set1_ps(128.0f));
      s[b][0] = _mm512_permutexvar_ps(pair_lo, s16), s[b][1] = _mm512_permutexvar_ps(pair_hi, s16);
      z[b][0] = _mm512_permutexvar_ps(pair_lo, z16), z[b][1] = _mm512_permutexvar_ps(pair_hi, z16);
    }
    for (int64_t c = 0; c < a.G / 4; ++c) {
      prefetch_ahead(gp + c * kChunkBytes);   // the tile streams from DRAM
      __m512i w[8];
      unpack_chunk(gp + c * kChunkBytes, w);
      const int64_t pair = (g * a.G + 4 * c) / 2;
      for (int b = 0; b < 4; ++b)
        for (int h = 0; h < 2; ++h) {
          uint16_t* dst = out + (pair + h) * kPairElems + 32 * b;
          for (int half = 0; half < 2; ++half) {
            const __m256i raw = half ? _mm512_extracti64x4_epi64(w[2 * b + h], 1) : _mm512_castsi512_si256(w[2 * b + h]);
            const __m512 v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));  // 128 + q
            const __m512 dq = _mm512_mul_ps(_mm512_sub_ps(v, z[b][half]), s[b][half]);
            _mm256_storeu_si256((__m256i*)(dst + 16 * half), (__m256i)_mm512_cvtneps_pbh(dq));
          }
        }
    }
  }
}

void check_packed(const at::Tensor& packed, int64_t K, int64_t G, int64_t N) {
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 3 && packed.is_contiguous(),
              "packed must be a contiguous uint8 [tiles, groups, bytes] tensor");
  TORCH_CHECK(G % 4 == 0 && G <= 1024 && packed.size(2) == group_bytes(G), "packed bytes do not match group size ", G);
  TORCH_CHECK(K == packed.size(1) * G, "x has ", K, " inputs, the weight has ", packed.size(1) * G);
  TORCH_CHECK(N > 0 && N <= packed.size(0) * kTileRows, "out_features ", N, " exceeds the packed tiles");
}

inline float bf16_to_float(uint16_t bits) {
  const uint32_t wide = uint32_t(bits) << 16;
  float f;
  std::memcpy(&f, &wide, sizeof(f));
  return f;
}

// Sum of each group of inputs, of exactly the bf16 values the dot products see. A plain
// loop: at batch 1 the ATen equivalent (convert, view, sum) cost more than the sums.
std::vector<float> group_sums(const Bf16Split& x, int64_t G) {
  const int64_t M = x.hi.size(0), K = x.hi.size(1);
  std::vector<float> sums(static_cast<size_t>(M * (K / G)));
  const uint16_t* hi = (const uint16_t*)x.hi.data_ptr();
  const uint16_t* lo = x.lo.has_value() ? (const uint16_t*)x.lo->data_ptr() : nullptr;
  float* out = sums.data();
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < K / G; ++g) {
      float total = 0.f;
      for (int64_t k = m * K + g * G; k < m * K + (g + 1) * G; ++k)
        total += bf16_to_float(hi[k]) + (lo ? bf16_to_float(lo[k]) : 0.f);
      out[m * (K / G) + g] = total;
    }
  return sums;
}

}  // namespace

void int4_gemm_rows(const at::Tensor& packed, const at::Tensor& rows, const at::Tensor& bias_f, int64_t group_size,
                    int64_t out_features, const at::Tensor& y) {
  check_packed(packed, rows.size(1), group_size, out_features);
  const Bf16Split split = split_bf16(rows);
  const int64_t M = rows.size(0), T = packed.size(0);
  const bool dense_tiles = !split.lo.has_value() && M > kMaxRowsDirect;
  const std::vector<float> sumx = dense_tiles ? std::vector<float>() : group_sums(split, group_size);
  const Int4Acts a{(const uint16_t*)split.hi.data_ptr(),
                   split.lo.has_value() ? (const uint16_t*)split.lo->data_ptr() : nullptr,
                   dense_tiles ? nullptr : sumx.data(), rows.size(1), group_size, packed.size(1)};
  const uint8_t* base = packed.data_ptr<uint8_t>();
  const int64_t tile_bytes = packed.size(1) * packed.size(2);
  const float* bp = bias_f.defined() ? bias_f.data_ptr<float>() : nullptr;
  if (dense_tiles) {
    at::parallel_for(0, T, 1, [&](int64_t t0, int64_t t1) {
      std::unique_ptr<uint16_t[]> dense(new uint16_t[kTileRows * rows.size(1)]);
      std::unique_ptr<float[]> acc(new float[M * kTileRows]);
      for (int64_t t = t0; t < t1; ++t) {
        dequant_tile(base + t * tile_bytes, a, dense.get());
        tile_times_rows(dense.get(), a.xh, a.K, a.K, M, acc.get(), kTileRows);
        store_tile_rows(acc.get(), 0, M, t * kTileRows, out_features, bp, y.scalar_type(), y.data_ptr());
      }
    });
    return;
  }
  at::parallel_for(0, T, 1, [&](int64_t t0, int64_t t1) {
    std::unique_ptr<__m512i[]> buf(M > kMaxRowsDirect ? new __m512i[2 * group_size] : nullptr);
    std::unique_ptr<float[]> acc(new float[M * kTileRows]);
    for (int64_t t = t0; t < t1; ++t) {
      std::fill(acc.get(), acc.get() + M * kTileRows, 0.f);
      const uint8_t* tile = base + t * tile_bytes;
      if (a.xl) run_tile<true>(tile, a, M, buf.get(), acc.get(), kTileRows);
      else run_tile<false>(tile, a, M, buf.get(), acc.get(), kTileRows);
      store_tile_rows(acc.get(), 0, M, t * kTileRows, out_features, bp, y.scalar_type(), y.data_ptr());
    }
  });
}

namespace {

// y[..., N] = x[..., K] @ W^T + bias, W given as packed tiles; y in x's dtype.
at::Tensor int4_gemm(const at::Tensor& packed, const at::Tensor& x, const std::optional<at::Tensor>& bias,
                     int64_t group_size, int64_t out_features) {
  const at::Tensor rows = as_rows(x);
  const at::Tensor bias_f = float_bias(bias, out_features);
  at::Tensor y = new_output(rows, out_features);
  int4_gemm_rows(packed, rows, bias_f, group_size, out_features, y);
  return with_leading_dims(y, x);
}

}  // namespace
}  // namespace qfid_cpu

TORCH_LIBRARY_FRAGMENT(qfid_cpu, m) {
  m.def("int4_gemm(Tensor packed, Tensor x, Tensor? bias, int group_size, int out_features) -> Tensor",
        &qfid_cpu::int4_gemm);
}
