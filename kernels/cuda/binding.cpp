// torch binding for the CUDA kernels: ops `qfid_cuda::awq_gemv`, `qfid_cuda::awq_dequant`,
// `qfid_cuda::fp8_dequant`. Built by qfid/kernels/cuda_ops.py through
// torch.utils.cpp_extension.load only when CUDA is present. The .cu files stay free of
// torch headers; this file owns checks, allocation and the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>

namespace qfid_cuda {

int awq_gemv(int dtype, const void* x, int M, const int32_t* qweight, const int32_t* qzeros, const float* scales,
             float* y, int K, int N, int group_size, int split, cudaStream_t stream);
int awq_dequant(int dtype, const int32_t* qweight, const int32_t* qzeros, const float* scales, void* out, int K, int N,
                int group_size, cudaStream_t stream);
int fp8_dequant(int dtype, const uint8_t* w, const float* scale, int scale_per_row, void* out, int64_t N, int64_t K,
                cudaStream_t stream);
int awq_max_rows();

namespace {

int dtype_code(at::ScalarType t) {  // dtypes.cuh: kHalf, kBFloat16, kFloat
  switch (t) {
    case at::kHalf: return 0;
    case at::kBFloat16: return 1;
    case at::kFloat: return 2;
    default: break;
  }
  TORCH_CHECK(false, "unsupported dtype ", t);
  return -1;
}

void check_awq(const at::Tensor& qweight, const at::Tensor& qzeros, const at::Tensor& scales, int64_t group_size) {
  TORCH_CHECK(qweight.is_cuda() && qweight.scalar_type() == at::kInt && qweight.is_contiguous(), "qweight: contiguous CUDA int32");
  TORCH_CHECK(qzeros.scalar_type() == at::kInt && qzeros.is_contiguous(), "qzeros: contiguous int32");
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous(), "scales: contiguous fp32 (upcast once at load)");
  TORCH_CHECK(qweight.size(0) % group_size == 0 && scales.size(1) == qweight.size(1) * 8, "AWQ tensor shapes disagree");
}

// x [M, K] (M <= 8) -> fp32 [M, N]; the caller adds bias and casts.
at::Tensor awq_gemv_op(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& qzeros,
                       const at::Tensor& scales, int64_t group_size, int64_t split) {
  check_awq(qweight, qzeros, scales, group_size);
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.size(1) == qweight.size(0), "x: contiguous [M, K]");
  TORCH_CHECK(x.size(0) >= 1 && x.size(0) <= awq_max_rows(), "awq_gemv takes 1..", awq_max_rows(), " rows");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = scales.size(1);
  at::Tensor y = at::zeros({x.size(0), N}, x.options().dtype(at::kFloat));
  const int rc = awq_gemv(dtype_code(x.scalar_type()), x.data_ptr(), int(x.size(0)), qweight.data_ptr<int32_t>(),
                          qzeros.data_ptr<int32_t>(), scales.data_ptr<float>(), y.data_ptr<float>(), int(x.size(1)),
                          int(N), int(group_size), int(split), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(rc == 0, "awq_gemv failed: ", rc);
  return y;
}

// Dense [K, N] weight in `dtype`.
at::Tensor awq_dequant_op(const at::Tensor& qweight, const at::Tensor& qzeros, const at::Tensor& scales,
                          int64_t group_size, at::ScalarType dtype) {
  check_awq(qweight, qzeros, scales, group_size);
  const c10::cuda::CUDAGuard guard(qweight.device());
  at::Tensor out = at::empty({qweight.size(0), scales.size(1)}, qweight.options().dtype(dtype));
  const int rc = awq_dequant(dtype_code(dtype), qweight.data_ptr<int32_t>(), qzeros.data_ptr<int32_t>(),
                             scales.data_ptr<float>(), out.data_ptr(), int(qweight.size(0)), int(scales.size(1)),
                             int(group_size), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(rc == 0, "awq_dequant failed: ", rc);
  return out;
}

// Dense [N, K] weight in `dtype` from E4M3 [N, K] and an fp32 scale of N or 1 elements.
at::Tensor fp8_dequant_op(const at::Tensor& w, const at::Tensor& scale, at::ScalarType dtype) {
  TORCH_CHECK(w.is_cuda() && w.dim() == 2 && w.is_contiguous() && w.element_size() == 1, "w: contiguous CUDA E4M3 [N, K]");
  const at::Tensor s = scale.to(at::kFloat).contiguous();
  TORCH_CHECK(s.numel() == 1 || s.numel() == w.size(0), "scale must have 1 or N elements");
  const c10::cuda::CUDAGuard guard(w.device());
  at::Tensor out = at::empty(w.sizes(), w.options().dtype(dtype));
  const int rc = fp8_dequant(dtype_code(dtype), static_cast<const uint8_t*>(w.data_ptr()), s.data_ptr<float>(),
                             s.numel() > 1, out.data_ptr(), w.size(0), w.size(1), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(rc == 0, "fp8_dequant failed: ", rc);
  return out;
}

}  // namespace
}  // namespace qfid_cuda

TORCH_LIBRARY(qfid_cuda, m) {
  m.def("awq_gemv(Tensor x, Tensor qweight, Tensor qzeros, Tensor scales, int group_size, int split) -> Tensor");
  m.def("awq_dequant(Tensor qweight, Tensor qzeros, Tensor scales, int group_size, ScalarType dtype) -> Tensor");
  m.def("fp8_dequant(Tensor w, Tensor scale, ScalarType dtype) -> Tensor");
}

TORCH_LIBRARY_IMPL(qfid_cuda, CUDA, m) {
  m.impl("awq_gemv", &qfid_cuda::awq_gemv_op);
  m.impl("awq_dequant", &qfid_cuda::awq_dequant_op);
  m.impl("fp8_dequant", &qfid_cuda::fp8_dequant_op);
}
