// AVX-512 BF16 dense matmul for bf16 models on the CPU runtime (op `qfid_cpu::bf16_gemm`).
//
// Why our own kernel: a decode step multiplies a handful of rows by every weight once.
// torch hands bf16 `linear` to oneDNN, which on this Zen 4 (AVX512-BF16, no AMX) reads the
// weights at 5-25 GB/s for one row and reaches ~150 GFLOPS at 64 rows (measured on
// SmolLM2's 576-wide layers), because it reorders the plain [N, K] weight for every call.
// Here the weight is reordered once at load time into the order `vdpbf16ps` consumes, so
// one row streams the weights at memory speed and many rows run from L1/L2 at the
// instruction's throughput.
//
// Packed layout (built by qfid/kernels/cpu_layout.py `pack_bf16_tiles`): tiles of 64
// output rows; in a tile, for each input pair p = (2p, 2p+1), 64 rows x 2 bf16 = 256
// bytes, sub-block b (bytes 64b..64b+63) holding rows 16b..16b+15 with the pair adjacent:
// exactly one `vdpbf16ps` operand per sub-block. A tile is one sequential stream.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <memory>

#include "activations.h"
#include "bf16_tile.h"

namespace qfid_cpu {
namespace {

// How many row chunks each tile's work is cut into: enough work items to keep every
// thread busy on narrow layers (576 outputs = 9 tiles), whole register blocks each.
int64_t row_chunk(int64_t M, int64_t tiles) {
  const int64_t wanted_items = 8 * at::get_num_threads();
  const int64_t chunks = std::clamp<int64_t>((wanted_items + tiles - 1) / tiles, 1, (M + kRowBlock - 1) / kRowBlock);
  const int64_t rows = (M + chunks - 1) / chunks;
  return (rows + kRowBlock - 1) / kRowBlock * kRowBlock;
}

void check_args(const at::Tensor& packed, const at::Tensor& rows, int64_t N) {
  TORCH_CHECK(packed.scalar_type() == at::kBFloat16 && packed.dim() == 3 && packed.is_contiguous(),
              "packed must be a contiguous bf16 [tiles, K/2, 128] tensor");
  TORCH_CHECK(packed.size(2) == kPairElems, "packed tiles must hold 64 rows x 2 inputs per pair");
  TORCH_CHECK(rows.scalar_type() == at::kBFloat16, "bf16_gemm takes bf16 activations, got ", rows.scalar_type());
  TORCH_CHECK(rows.size(1) == 2 * packed.size(1), "x has ", rows.size(1), " inputs, the weight has ", 2 * packed.size(1));
  TORCH_CHECK(N > 0 && N <= packed.size(0) * kTileRows, "out_features ", N, " exceeds the packed tiles");
}

// y[..., N] = x[..., K] @ W^T + bias with W given as packed tiles; bf16 in and out.
at::Tensor bf16_gemm(const at::Tensor& packed, const at::Tensor& x, const std::optional<at::Tensor>& bias,
                     int64_t out_features) {
  const at::Tensor rows = as_rows(x).contiguous();
  check_args(packed, rows, out_features);
  const at::Tensor bias_f = float_bias(bias, out_features);
  const int64_t M = rows.size(0), K = rows.size(1), T = packed.size(0);
  at::Tensor y = new_output(rows, out_features);
  if (M == 0) return with_leading_dims(y, x);
  const uint16_t* xp = reinterpret_cast<const uint16_t*>(rows.data_ptr());
  const uint16_t* wp = reinterpret_cast<const uint16_t*>(packed.data_ptr());
  const float* bp = bias_f.defined() ? bias_f.data_ptr<float>() : nullptr;
  const int64_t chunk = row_chunk(M, T), chunks = (M + chunk - 1) / chunk;
  at::parallel_for(0, T * chunks, 1, [&](int64_t i0, int64_t i1) {
    std::unique_ptr<float[]> acc(new float[chunk * kTileRows]);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t t = i / chunks, m0 = (i % chunks) * chunk, m1 = std::min(M, m0 + chunk);
      tile_times_rows(wp + t * K * kTileRows, xp + m0 * K, K, K, m1 - m0, acc.get(), kTileRows);
      store_tile_rows(acc.get(), m0, m1, t * kTileRows, out_features, bp, y.scalar_type(), y.data_ptr());
    }
  });
  return with_leading_dims(y, x);
}

}  // namespace
}  // namespace qfid_cpu

TORCH_LIBRARY_FRAGMENT(qfid_cpu, m) {
  m.def("bf16_gemm(Tensor packed, Tensor x, Tensor? bias, int out_features) -> Tensor", &qfid_cpu::bf16_gemm);
}
