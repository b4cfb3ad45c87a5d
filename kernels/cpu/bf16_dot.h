// Shared AVX-512 BF16 building blocks for the CPU weight-only kernels.
//
// Both kernels turn their weights into bf16 numbers that are *exact* (a 4-bit code, an
// E4M3 value) and multiply them with `vdpbf16ps`, which does 32 multiply-adds per
// instruction into fp32. Activations arrive pre-split by the caller: x ~= xh + xl, both
// bf16, so fp32/fp16 inputs lose nothing that matters (the split error is 2^-17 relative),
// while bf16 inputs skip the second half (xl == nullptr).
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

// Hot helpers must inline: their accumulator arrays only stay in registers when they do.
#define QFID_INLINE inline __attribute__((always_inline))

namespace qfid_cpu {

// The pair (x[k], x[k+1]) in every 32-bit lane: the operand `vdpbf16ps` wants when the
// 16 lanes are 16 different output rows.
inline __m512bh bcast_pair(const uint16_t* x) {
  int32_t v;
  std::memcpy(&v, x, sizeof(v));
  return (__m512bh)_mm512_set1_epi32(v);
}

inline __m512 dot(__m512 acc, __m512i w, __m512bh x) {
  return _mm512_dpbf16_ps(acc, (__m512bh)w, x);
}

inline void zero(__m512* v, int n) {
  for (int i = 0; i < n; ++i) v[i] = _mm512_setzero_ps();
}

}  // namespace qfid_cpu
