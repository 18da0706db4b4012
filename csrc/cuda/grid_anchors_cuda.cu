// CUDA kernel of grid_anchors: one thread per anchor (h * w * A of them,
// 64-bit indices), the shift computed by coding::shift_anchor exactly as on
// the CPU (same rounding of the integer shift to the output dtype first).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "common/box_coding.h"
#include "common/checks.h"
#include "ops/grid_anchors.h"

namespace pydetops {
namespace {

// base: [a, 4] (acc_t); out: [h * w * a, 4], anchor (y, x, k) at row (y * w + x) * a + k.
template <typename out_t, typename acc_t>
__global__ void grid_anchors_kernel(const acc_t* __restrict__ base, int64_t h, int64_t w, int64_t a, int64_t sy,
                                    int64_t sx, out_t* __restrict__ out) {
  const int64_t total = h * w * a;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t k = e % a;
    const int64_t cell = e / a;
    const int64_t x = cell % w, y = cell / w;
    coding::shift_anchor<out_t, acc_t>(base + 4 * k, static_cast<long long>(x * sx), static_cast<long long>(y * sy),
                                       out + 4 * e);
  }
}

at::Tensor grid_anchors_cuda(const at::Tensor& base_anchors, at::IntArrayRef feature_size, at::IntArrayRef stride) {
  check_grid_anchors_args(base_anchors, feature_size, stride);
  const c10::cuda::CUDAGuard guard(base_anchors.device());
  const int64_t h = feature_size[0], w = feature_size[1], a = base_anchors.size(0);
  const int64_t sy = stride[0], sx = stride[1];
  at::Tensor out = at::empty({h * w * a, 4}, base_anchors.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const auto acc_type = accumulate_type_of(base_anchors.scalar_type());
  const at::Tensor base = base_anchors.to(acc_type).contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t total = h * w * a;
  const unsigned int blocks =
      static_cast<unsigned int>(std::min<int64_t>(std::max<int64_t>(1, (total + 255) / 256), 1 << 20));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, base_anchors.scalar_type(), "grid_anchors_cuda", [&] {
    using out_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(acc_type, "grid_anchors_cuda_acc", [&] {
      using acc_t = scalar_t;
      grid_anchors_kernel<out_t, acc_t><<<blocks, 256, 0, stream>>>(base.data_ptr<acc_t>(), h, w, a, sy, sx,
                                                                    out.data_ptr<out_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CUDA, m) {
  m.impl("grid_anchors", &pydetops::grid_anchors_cuda);
}
