// The register-blocked core of qfid's bf16 matmuls on AVX-512 BF16: rows of x against one
// tile of 64 packed weight rows (the layout of kernels/cpu/bf16_gemm.cpp: per input pair,
// 64 rows x 2 bf16, one `vdpbf16ps` operand per 16 rows). Shared by the dense GEMM and the
// prefill attention, which packs keys (and transposed values) into the same layout.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "bf16_dot.h"

namespace qfid_cpu {

constexpr int64_t kTileRows = 64;
constexpr int64_t kPairElems = 2 * kTileRows;  // bf16 values per input pair in a tile
constexpr int kRowBlock = 6;                   // x rows per register block: 24 accumulators

// acc[m][s][b] += W[tile rows 16b.., pair p] . x[m, 2p..2p+1] for MB rows of x, over all
// K/2 pairs. S accumulator sets alternate between pairs so a single batch row
// still has eight independent `vdpbf16ps` chains. Writes the sums to out[m * ldo + 0..63].
template <int MB, int S>
QFID_INLINE void tile_rows(const uint16_t* tile, const uint16_t* x, int64_t ldx, int64_t K, float* out,
                           int64_t ldo) {
  __m512 acc[MB][S][4];
  zero(&acc[0][0][0], MB * S * 4);
  const int64_t pairs = K / 2;
  int64_t p = 0;
  for (; p + S <= pairs; p += S) {
    for (int s = 0; s < S; ++s) {
      const __m512i* w = reinterpret_cast<const __m512i*>(tile + (p + s) * kPairElems);
      const __m512i w0 = _mm512_loadu_si512(w), w1 = _mm512_loadu_si512(w + 1);
      const __m512i w2 = _mm512_loadu_si512(w + 2), w3 = _mm512_loadu_si512(w + 3);
      for (int m = 0; m < MB; ++m) {
        const __m512bh xp = bcast_pair(x + m * ldx + 2 * (p + s));
        acc[m][s][0] = dot(acc[m][s][0], w0, xp);
        acc[m][s][1] = dot(acc[m][s][1], w1, xp);
        acc[m][s][2] = dot(acc[m][s][2], w2, xp);
        acc[m][s][3] = dot(acc[m][s][3], w3, xp);
      }
    }
  }
  for (; p < pairs; ++p) {  // odd pair count with S == 2
    const __m512i* w = reinterpret_cast<const __m512i*>(tile + p * kPairElems);
    for (int m = 0; m < MB; ++m) {
      const __m512bh xp = bcast_pair(x + m * ldx + 2 * p);
      for (int b = 0; b < 4; ++b) acc[m][0][b] = dot(acc[m][0][b], _mm512_loadu_si512(w + b), xp);
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int b = 0; b < 4; ++b) {
      __m512 total = acc[m][0][b];
      for (int s = 1; s < S; ++s) total = _mm512_add_ps(total, acc[m][s][b]);
      _mm512_storeu_ps(out + m * ldo + 16 * b, total);
    }
}

// All `rows` rows of x (row stride ldx, K inputs) against one tile: out[m][0..63], row
// stride ldo, kRowBlock rows at a time so the tile is read from L1/L2 after the first.
inline void tile_times_rows(const uint16_t* tile, const uint16_t* x, int64_t ldx, int64_t K, int64_t rows,
                            float* out, int64_t ldo) {
  for (int64_t m = 0; m < rows; m += kRowBlock) {
    const uint16_t* xm = x + m * ldx;
    float* om = out + m * ldo;
    switch (std::min<int64_t>(kRowBlock, rows - m)) {
      case 1: tile_rows<1, 2>(tile, xm, ldx, K, om, ldo); break;
      case 2: tile_rows<2, 1>(tile, xm, ldx, K, om, ldo); break;
      case 3: tile_rows<3, 1>(tile, xm, ldx, K, om, ldo); break;
      case 4: tile_rows<4, 1>(tile, xm, ldx, K, om, ldo); break;
      case 5: tile_rows<5, 1>(tile, xm, ldx, K, om, ldo); break;
      default: tile_rows<6, 1>(tile, xm, ldx, K, om, ldo); break;
    }
  }
}

}  // namespace qfid_cpu
