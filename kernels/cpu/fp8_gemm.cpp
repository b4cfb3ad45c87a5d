// AVX-512 BF16 FP8 (E4M3) weight-only matmul for the CPU runtime (op `qfid_cpu::fp8_gemm`).
//
// Why: an FP8 checkpoint is half the bytes of bf16, so a batch-1 step can be up to twice
// as fast, but only if the conversion keeps up with memory. The weight stays in its
// checkpoint layout ([N, K] row-major, one byte per weight); no repack is needed.
//
// Conversion, exact for every E4M3 code including zero and subnormals: two 128-entry byte
// tables (`vpermi2b`, AVX-512 VBMI) give the high and low byte of the bf16 value of the 7
// magnitude bits, the sign is OR-ed into the high byte, and two `vpermt2b` interleave the
// bytes back into 32-bit-lane order: 64 weights in six instructions, which keeps one core
// at memory speed (an fp16 -> fp32 -> bf16 chain through `vcvtph2ps` did not).
// (The E4M3 NaN code reads as 480: the quantizer clamps to +-448 and never writes it.)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <memory>

#include "activations.h"
#include "bf16_tile.h"

namespace qfid_cpu {
namespace {

constexpr int64_t kSlice = 64;       // inputs per conversion step
// Up to this many batch rows the streamed kernel wins (measured: at 8 rows it ties
// dequantize + ATen's blocked GEMM on 4096-wide layers and beats it on small ones, whose
// GEMM calls are mostly overhead); beyond it the dot products dominate, and bf16
// activations go to the packed-tile path (`dequant_tiles`), others to oneDNN.
constexpr int64_t kStreamRows = 8;
// (bf16 activations against the packed-tile path, the default model's FP8 layers in decode
// order, same run: 8 rows 6.5-7.2 / 7.6-8.0 ms, 12 rows 9.4-11.5 / 7.9-8.4.)
constexpr int64_t kChunkRows = 256;  // weight rows per dequantized block

struct Fp8Args {
  const uint8_t* w;    // [N, K]
  const uint16_t* xh;  // [M, K] bf16 bits
  const uint16_t* xl;  // [M, K] bf16 bits or nullptr
  const float* scale;  // [N] (already expanded from a per-tensor scale)
  const float* bias;   // [N] or nullptr
  void* out;           // [M, N] in `dtype`
  at::ScalarType dtype;
  int64_t N, K;
};

// The lookup tables and interleave indices, built once.
struct Tables {
  __m512i hi0, hi1, lo0, lo1, even, odd;
};

inline float e4m3_magnitude(int code) {
  const int e = code >> 3, m = code & 7;
  return e ? std::ldexp(1.0f + m / 8.0f, e - 7) : std::ldexp(m / 8.0f, -6);
}

const Tables& tables() {
  static const Tables t = [] {
    alignas(64) uint8_t hi[128], lo[128], even[64], odd[64];
    for (int code = 0; code < 128; ++code) {
      const float f = e4m3_magnitude(code);
      uint32_t bits;
      std::memcpy(&bits, &f, sizeof(bits));
      hi[code] = uint8_t(bits >> 24);
      lo[code] = uint8_t(bits >> 16);
    }
    for (int j = 0; j < 32; ++j) {  // word j = lo byte j | hi byte j << 8
      even[2 * j] = uint8_t(j), even[2 * j + 1] = uint8_t(64 + j);
      odd[2 * j] = uint8_t(32 + j), odd[2 * j + 1] = uint8_t(96 + j);
    }
    return Tables{_mm512_load_si512(hi), _mm512_load_si512(hi + 64), _mm512_load_si512(lo),
                  _mm512_load_si512(lo + 64), _mm512_load_si512(even), _mm512_load_si512(odd)};
  }();
  return t;
}

// 64 E4M3 bytes -> two registers of 32 bf16 (inputs 0..31 and 32..63), exact.
QFID_INLINE void fp8x64_to_bf16(const uint8_t* p, __mmask64 mask, const Tables& t, __m512i* w) {
  const __m512i v = _mm512_maskz_loadu_epi8(mask, p);
  __m512i hi = _mm512_permutex2var_epi8(t.hi0, v, t.hi1);
  const __m512i lo = _mm512_permutex2var_epi8(t.lo0, v, t.lo1);
  hi = _mm512_ternarylogic_epi32(hi, v, _mm512_set1_epi8(char(0x80)), 0xF8);  // hi | (v & 0x80)
  w[0] = _mm512_permutex2var_epi8(lo, t.even, hi);
  w[1] = _mm512_permutex2var_epi8(lo, t.odd, hi);
}

inline __mmask64 tail_mask(int64_t k, int64_t K) {
  const int64_t left = K - k;
  return left >= kSlice ? ~__mmask64(0) : left <= 0 ? __mmask64(0) : (__mmask64(1) << left) - 1;
}

// acc[m] += w . x[m0 + m] over one 64-wide slice of K (lanes run along K here; w[0] and
// w[1] are the slice's two halves).
template <int MB, bool kLo>
QFID_INLINE void dot_slice(const __m512i* w, const Fp8Args& a, int64_t m0, int64_t k, __mmask64 mask, __m512* acc) {
  const __mmask32 m_lo = __mmask32(mask), m_hi = __mmask32(mask >> 32);
  for (int m = 0; m < MB; ++m) {
    for (int part = 0; part < (kLo ? 2 : 1); ++part) {
      const uint16_t* x = (part ? a.xl : a.xh) + (m0 + m) * a.K + k;
      acc[m] = dot(acc[m], w[0], (__m512bh)_mm512_maskz_loadu_epi16(m_lo, x));
      acc[m] = dot(acc[m], w[1], (__m512bh)_mm512_maskz_loadu_epi16(m_hi, x + 32));
    }
  }
}

// One 64-wide slice of weight row `row`, converted and dotted with MB batch rows.
template <int MB, bool kLo>
QFID_INLINE void slice_into(const uint8_t* row, const Fp8Args& a, int64_t m0, int64_t k, const Tables& t, __m512* acc) {
  const __mmask64 mask = tail_mask(k, a.K);  // all-off past the end: nothing is loaded
  __m512i w[2];
  fp8x64_to_bf16(row + k, mask, t, w);
  dot_slice<MB, kLo>(w, a, m0, k, mask, acc);
}

// Batch rows m0..m0+MB-1 against weight row n. Even and odd slices go to separate
// accumulators so `vdpbf16ps` latency does not serialise the loop.
template <int MB, bool kLo>
void row_block(const Fp8Args& a, int64_t n, int64_t m0) {
  const Tables& t = tables();
  const uint8_t* row = a.w + n * a.K;
  __m512 even[MB], odd[MB];
  zero(even, MB);
  zero(odd, MB);
  for (int64_t k = 0; k < a.K; k += 2 * kSlice) {
    if (m0 == 0) prefetch_ahead(row + k);  // later passes find the row in L1
    slice_into<MB, kLo>(row, a, m0, k, t, even);
    slice_into<MB, kLo>(row, a, m0, k + kSlice, t, odd);
  }
  const float add = a.bias ? a.bias[n] : 0.f;
  for (int m = 0; m < MB; ++m)
    store_one(a.out, a.dtype, (m0 + m) * a.N + n, _mm512_reduce_add_ps(_mm512_add_ps(even[m], odd[m])) * a.scale[n] + add);
}

// One weight row against the whole (small) batch, four batch rows per pass; later passes
// find the row in L1. Rows are streamed one at a time: a single sequential stream per
// thread is what the prefetchers serve best (measured here: ~23 GB/s per core, against
// ~16.5 GB/s with four rows interleaved), with `prefetch_ahead` keeping it ahead.
template <bool kLo>
void stream_row(const Fp8Args& a, int64_t n, int64_t M) {
  for (int64_t m0 = 0; m0 < M; m0 += 4) {
    switch (std::min<int64_t>(4, M - m0)) {
      case 1: row_block<1, kLo>(a, n, m0); break;
      case 2: row_block<2, kLo>(a, n, m0); break;
      case 3: row_block<3, kLo>(a, n, m0); break;
      default: row_block<4, kLo>(a, n, m0); break;
    }
  }
}

at::Tensor streamed(const at::Tensor& w, const at::Tensor& rows, const at::Tensor& row_scale, const at::Tensor& bias) {
  const Bf16Split split = split_bf16(rows);
  const int64_t M = rows.size(0), N = w.size(0), K = w.size(1);
  at::Tensor y = new_output(rows, N);
  const Fp8Args a{w.data_ptr<uint8_t>(), (const uint16_t*)split.hi.data_ptr(),
                  split.lo.has_value() ? (const uint16_t*)split.lo->data_ptr() : nullptr,
                  row_scale.data_ptr<float>(), bias.defined() ? bias.data_ptr<float>() : nullptr,
                  y.data_ptr(), y.scalar_type(), N, K};
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      if (a.xl) stream_row<true>(a, n, M);
      else stream_row<false>(a, n, M);
    }
  });
  return y;
}

// One weight row times its scale, rounded once to bf16, by table. An E4M3 byte has 128
// magnitudes, so the row's 128 products bf16(magnitude * scale) are computed once (the
// same fp32 product and rounding dequant_row does per weight for other dtypes) and each
// weight is a lookup plus its sign bit: 32 weights in 8 instructions, where converting,
// widening, scaling and narrowing took 13. The row streams from DRAM, so it prefetches
// ahead as the streamed path does. Both together took the default model's FP8 layers in
// decode order from 17.6-18.0 to 9.5-10.8 ms at 17 rows and from 28.6-29.1 to 20.4-23.5 at
// 64 (same run); the lookup alone gained 3-5%.
void dequant_row_bf16(const uint8_t* row, int64_t K, float scale, uint16_t* out) {
  static const std::array<float, 128> magnitudes = [] {
    std::array<float, 128> m{};
    for (int code = 0; code < 128; ++code) m[code] = e4m3_magnitude(code);
    return m;
  }();
  const __m512 s = _mm512_set1_ps(scale);
  __m512i table[4];   // entries 32q .. 32q + 31
  for (int q = 0; q < 4; ++q) {
    const __m512 lo = _mm512_mul_ps(_mm512_loadu_ps(magnitudes.data() + 32 * q), s);
    const __m512 hi = _mm512_mul_ps(_mm512_loadu_ps(magnitudes.data() + 32 * q + 16), s);
    table[q] = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
  }
  const __m512i bit6 = _mm512_set1_epi16(0x40), sign = _mm512_set1_epi16(static_cast<short>(0x8000));
  for (int64_t k = 0; k < K; k += 32) {
    const int64_t left = K - k;
    const __mmask32 mask = left >= 32 ? ~__mmask32(0) : (__mmask32(1) << left) - 1;
    if (k % 128 == 0) prefetch_ahead(row + k);
    const __m512i codes = _mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(mask, row + k));
    const __m512i low = _mm512_permutex2var_epi16(table[0], codes, table[1]);    // magnitudes 0-63
    const __m512i high = _mm512_permutex2var_epi16(table[2], codes, table[3]);   // 64-127
    const __m512i w = _mm512_mask_blend_epi16(_mm512_test_epi16_mask(codes, bit6), low, high);
    const __m512i signed_w = _mm512_ternarylogic_epi32(w, _mm512_slli_epi16(codes, 8), sign, 0xF8);  // w | (sign bit)
    _mm512_mask_storeu_epi16(out + k, mask, signed_w);
  }
}

// One weight row times its scale, rounded once into `dtype` (what the reference computes).
void dequant_row(const uint8_t* row, int64_t K, float scale, at::ScalarType dtype, void* out) {
  if (dtype == at::kBFloat16) return dequant_row_bf16(row, K, scale, static_cast<uint16_t*>(out));
  const Tables& t = tables();
  const __m512 s = _mm512_set1_ps(scale);
  for (int64_t k = 0; k < K; k += kSlice) {
    const __mmask64 mask = tail_mask(k, K);
    if (k % 128 == 0) prefetch_ahead(row + k);   // the row streams from DRAM
    __m512i w[2];
    fp8x64_to_bf16(row + k, mask, t, w);
    for (int q = 0; q < 4; ++q) {  // 16 weights at a time, widened to fp32 and scaled
      const __m256i bf = q % 2 ? _mm512_extracti64x4_epi64(w[q / 2], 1) : _mm512_castsi512_si256(w[q / 2]);
      const __m512 v = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bf), 16)), s);
      store16(out, dtype, k + 16 * q, v, __mmask16(mask >> (16 * q)));
    }
  }
}

// Many batch rows are compute-bound: dequantize kChunkRows weight rows at a time into x's
// dtype (an L2-sized block) and hand each block to ATen's GEMM (oneDNN / MKL). One
// parallel region over the blocks (the GEMM inside runs on its thread alone): many short
// regions stall on any descheduled thread when the machine is shared.
at::Tensor dequant_chunks(const at::Tensor& w, const at::Tensor& rows, const at::Tensor& row_scale, const at::Tensor& bias) {
  const int64_t N = w.size(0), K = w.size(1);
  const at::Tensor x = rows.contiguous();
  const at::Tensor b = bias.defined() ? bias.to(x.scalar_type()) : at::Tensor();
  at::Tensor y = at::empty({x.size(0), N}, x.options());
  const uint8_t* wp = w.data_ptr<uint8_t>();
  const float* sp = row_scale.data_ptr<float>();
  // Worker threads do not inherit the caller's InferenceMode or grad mode; the ATen calls
  // below need the first when x is an inference tensor (a model run under
  // torch.inference_mode()), and this op is inference-only (no autograd formula).
  const bool inference = c10::InferenceMode::is_enabled();
  at::parallel_for(0, (N + kChunkRows - 1) / kChunkRows, 1, [&](int64_t c0, int64_t c1) {
    c10::InferenceMode guard(inference);
    at::NoGradGuard no_grad;
    at::Tensor chunk = at::empty({std::min(N, kChunkRows), K}, x.options());
    char* cp = static_cast<char*>(chunk.data_ptr());
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t n0 = c * kChunkRows, r = std::min(kChunkRows, N - n0);
      for (int64_t i = 0; i < r; ++i)
        dequant_row(wp + (n0 + i) * K, K, sp[n0 + i], x.scalar_type(), cp + i * K * chunk.element_size());
      const at::Tensor part = at::linear(x, chunk.narrow(0, 0, r), b.defined() ? b.narrow(0, n0, r) : at::Tensor());
      y.narrow(1, n0, r).copy_(part);
    }
  });
  return y;
}

// In place: r[j] becomes column j of the 16 x 16 matrix of 32-bit words whose row i was
// r[i] (three unpack/shuffle stages per pair of registers, 64 instructions in all).
inline void transpose16x16_epi32(__m512i* r) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);       // per 128-bit lane: a0 b0 a1 b1
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);   //                   a2 b2 a3 b3
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);       // a0 b0 c0 d0
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);   // a1 b1 c1 d1
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int h = 0; h < 16; h += 8)   // lanes (0, 2) and (1, 3) of rows i and i + 4
    for (int i = 0; i < 4; ++i) {
      t[h + i] = _mm512_shuffle_i32x4(r[h + i], r[h + i + 4], 0x88);
      t[h + i + 4] = _mm512_shuffle_i32x4(r[h + i], r[h + i + 4], 0xDD);
    }
  for (int i = 0; i < 8; ++i) {     // column i from t[i] and t[i + 8]; column i + 8 likewise
    r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xDD);
  }
}

// 16 dequantized weight rows (row-major bf16, K each) into rows b..b+15 of the dense
// GEMM's packed tile: per input pair p, the rows' (k, k + 1) words side by side. 16 x 16
// blocks of words are transposed in registers; the word-by-word scatter this replaces
// (each store to another cache line) made 16-row FP8 batches run at 0.28x bf16's speed.
void pack_rows16(const uint16_t* rows, int64_t K, uint32_t* tile, int64_t b) {
  const int64_t pairs = K / 2;
  const auto* words = reinterpret_cast<const uint32_t*>(rows);   // row r, pair p: words[r * pairs + p]
  int64_t p0 = 0;
  for (; p0 + 16 <= pairs; p0 += 16) {
    __m512i r[16];
    for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512(words + i * pairs + p0);
    transpose16x16_epi32(r);
    for (int j = 0; j < 16; ++j) _mm512_storeu_si512(tile + (p0 + j) * kTileRows + b, r[j]);
  }
  for (; p0 < pairs; ++p0)
    for (int64_t r = 0; r < 16; ++r) tile[p0 * kTileRows + b + r] = words[r * pairs + p0];
}

// Many bf16 batch rows: dequantize a tile's 64 weight rows (times their scale, rounded to
// bf16, as the reference does) 16 at a time into an L1-sized buffer, pack each 16 into the
// tile layout of the dense bf16 GEMM (bf16_tile.h), then run every batch row over the
// L2-resident tile on its register-blocked `vdpbf16ps` core. oneDNN's bf16 GEMM reorders
// its weight on every call and ran these 576-wide layers at a third of that core's speed.
// (All 64 rows dequantized at once made the dense rows an L2 round trip: the model's FP8
// layers at 16 rows took 8.6-9.2 ms against 8.2-9.1 this way, fresh processes alternating,
// bit for bit the same tiles.)
at::Tensor dequant_tiles(const at::Tensor& w, const at::Tensor& rows, const at::Tensor& row_scale, const at::Tensor& bias) {
  const int64_t M = rows.size(0), N = w.size(0), K = w.size(1), tiles = (N + kTileRows - 1) / kTileRows;
  TORCH_CHECK(K % 2 == 0, "fp8_gemm: bf16 tiles need an even number of inputs");
  const at::Tensor x = rows.contiguous();
  at::Tensor y = new_output(x, N);
  const uint8_t* wp = w.data_ptr<uint8_t>();
  const float* sp = row_scale.data_ptr<float>();
  const float* bp = bias.defined() ? bias.data_ptr<float>() : nullptr;
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr());
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    std::unique_ptr<uint16_t[]> dense(new uint16_t[16 * K]);   // 16 rows at a time: L1, not L2
    std::unique_ptr<uint32_t[]> tile(new uint32_t[kTileRows * K / 2]);
    std::unique_ptr<float[]> acc(new float[M * kTileRows]);
    for (int64_t t = t0; t < t1; ++t) {
      for (int64_t b = 0; b < kTileRows; b += 16) {
        for (int64_t r = 0; r < 16; ++r) {
          const int64_t n = t * kTileRows + b + r;
          uint16_t* row = dense.get() + r * K;
          if (n < N) dequant_row(wp + n * K, K, sp[n], at::kBFloat16, row);
          else std::fill(row, row + K, uint16_t(0));
        }
        pack_rows16(dense.get(), K, tile.get(), b);
      }
      tile_times_rows(reinterpret_cast<const uint16_t*>(tile.get()), xp, K, K, M, acc.get(), kTileRows);
      store_tile_rows(acc.get(), 0, M, t * kTileRows, N, bp, at::kBFloat16, y.data_ptr());
    }
  });
  return y;
}

// y[..., N] = x[..., K] @ (w * scale)^T + bias with w [N, K] E4M3 bits (uint8) and scale
// [N] or [1] fp32; y in x's dtype.
at::Tensor fp8_gemm(const at::Tensor& w, const at::Tensor& x, const at::Tensor& scale,
                    const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(w.scalar_type() == at::kByte && w.dim() == 2 && w.is_contiguous(), "w must be contiguous uint8 [N, K]");
  const at::Tensor rows = as_rows(x);
  TORCH_CHECK(rows.size(1) == w.size(1), "x has ", rows.size(1), " inputs, the weight has ", w.size(1));
  TORCH_CHECK(scale.numel() == 1 || scale.numel() == w.size(0), "scale must have 1 or N elements");
  const at::Tensor row_scale = scale.to(at::kFloat).reshape({-1}).expand({w.size(0)}).contiguous();
  check_activation_dtype(rows);
  const at::Tensor b = float_bias(bias, w.size(0));
  at::Tensor y;
  if (rows.size(0) <= kStreamRows) y = streamed(w, rows, row_scale, b);
  else if (rows.scalar_type() == at::kBFloat16 && w.size(1) % 2 == 0) y = dequant_tiles(w, rows, row_scale, b);
  else y = dequant_chunks(w, rows, row_scale, b);
  return with_leading_dims(y, x);
}

}  // namespace
}  // namespace qfid_cpu

TORCH_LIBRARY_FRAGMENT(qfid_cpu, m) {
  m.def("fp8_gemm(Tensor w, Tensor x, Tensor scale, Tensor? bias) -> Tensor", &qfid_cpu::fp8_gemm);
}
