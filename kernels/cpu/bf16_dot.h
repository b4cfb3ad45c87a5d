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

// How far ahead of the weights it is converting an INT4 or FP8 loop prefetches. Those loops
// spend a dozen or more instructions per 128 weight bytes, and at that pace the hardware
// prefetchers alone left their streams far below a plain read's 87 GB/s (batch 1, the
// default model's 120 layers in decode order, same run: INT4 31-32 GB/s, FP8 11-12 GB/s).
// Prefetching 8-32 KB ahead gave INT4 45-48 and FP8 37-43; 16 KB was as good as any. The
// loops that dequantize tiles for many rows stream the same way (INT4 at 8 rows: 8.4-8.8
// -> 4.9-5.3 ms over those layers). On slow-memory hours (~25 GB/s for a plain read) it
// changed nothing. The dense bf16 loop (4 loads per 4 `vdpbf16ps`) kept up without it and
// does not prefetch. Past a thread's last row it warms lines another thread reads;
// prefetches never fault.
constexpr int64_t kStreamPrefetchBytes = 16384;

// Prefetch the two cache lines kStreamPrefetchBytes past p (call once per 128 bytes).
inline void prefetch_ahead(const void* p) {
  const char* ahead = static_cast<const char*>(p) + kStreamPrefetchBytes;
  _mm_prefetch(ahead, _MM_HINT_T0);
  _mm_prefetch(ahead + 64, _MM_HINT_T0);
}

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
