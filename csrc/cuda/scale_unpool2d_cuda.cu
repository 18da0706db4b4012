// CUDA kernels of nearest_unpool2d and bed_of_nails_unpool2d and their
// backwards: one thread per output element (64-bit indices), (N, C, H, W) or
// (C, H, W) inputs read as contiguous planes. The nearest backward sums each
// s_h x s_w block in the accumulate type in the CPU kernel's order (rows in
// order; within a row pairs for s_w == 2, else left to right), so it gives the
// CPU's bits; the other three only copy.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/checks.h"
#include "ops/scale_unpool2d.h"

namespace pydetops {
namespace {

constexpr int kThreads = 256;

inline unsigned int blocks_for(int64_t n, int threads) {
  return static_cast<unsigned int>(std::min<int64_t>(std::max<int64_t>(1, (n + threads - 1) / threads), 1 << 30));
}

std::vector<int64_t> scaled_shape(const at::Tensor& t, const std::array<int64_t, 2>& s, bool up) {
  std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end());
  const size_t d = shape.size();
  shape[d - 2] = up ? shape[d - 2] * s[0] : shape[d - 2] / s[0];
  shape[d - 1] = up ? shape[d - 1] * s[1] : shape[d - 1] / s[1];
  return shape;
}

// out: rows * sh x (W * sw) values, row r of the input owning output rows r*sh .. r*sh+sh-1.
template <typename scalar_t, bool kNails>
__global__ void unpool_forward_kernel(const scalar_t* __restrict__ in, int64_t rows, int64_t W, int64_t sh,
                                      int64_t sw, scalar_t* __restrict__ out) {
  const int64_t Wo = W * sw;
  const int64_t total = rows * sh * Wo;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t ow = e % Wo;
    const int64_t orow = e / Wo;  // (plane, oh) flattened
    const int64_t r = orow / sh, i = orow % sh;
    const int64_t w = ow / sw, j = ow % sw;
    if (kNails) {
      out[e] = (i == 0 && j == 0) ? in[r * W + w] : scalar_t(0);
    } else {
      out[e] = in[r * W + w];
    }
  }
}

template <typename scalar_t>
__global__ void nearest_backward_kernel(const scalar_t* __restrict__ g, int64_t rows, int64_t W, int64_t sh,
                                        int64_t sw, scalar_t* __restrict__ gi) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t Wo = W * sw;
  const int64_t total = rows * W;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = e / W, w = e % W;
    acc_t acc = 0;
    for (int64_t i = 0; i < sh; ++i) {
      const scalar_t* b = g + (r * sh + i) * Wo + w * sw;
      if (sw == 2) {
        acc += static_cast<acc_t>(b[0]) + static_cast<acc_t>(b[1]);
      } else {
        for (int64_t j = 0; j < sw; ++j) acc += static_cast<acc_t>(b[j]);
      }
    }
    gi[e] = static_cast<scalar_t>(acc);
  }
}

template <typename scalar_t>
__global__ void nails_backward_kernel(const scalar_t* __restrict__ g, int64_t rows, int64_t W, int64_t sh,
                                      int64_t sw, scalar_t* __restrict__ gi) {
  const int64_t Wo = W * sw;
  const int64_t total = rows * W;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = e / W, w = e % W;
    gi[e] = g[r * sh * Wo + w * sw];
  }
}

template <bool kNails>
at::Tensor unpool_forward_cuda(const at::Tensor& input, at::IntArrayRef scale_factor) {
  const auto s = check_scale_unpool2d_args(input, scale_factor, "input");
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor out = at::empty(scaled_shape(input, s, true), input.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const at::Tensor x = input.contiguous();
  const int64_t W = input.size(-1), rows = input.numel() / W;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "scale_unpool2d_cuda", [&] {
    unpool_forward_kernel<scalar_t, kNails><<<blocks_for(out.numel(), kThreads), kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), rows, W, s[0], s[1], out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

template <bool kNails>
at::Tensor unpool_backward_cuda(const at::Tensor& grad_output, at::IntArrayRef scale_factor) {
  const auto s = check_scale_unpool2d_backward_args(grad_output, scale_factor);
  const c10::cuda::CUDAGuard guard(grad_output.device());
  at::Tensor gi = at::empty(scaled_shape(grad_output, s, false),
                            grad_output.options().memory_format(at::MemoryFormat::Contiguous));
  if (gi.numel() == 0) return gi;
  const at::Tensor go = grad_output.contiguous();
  const int64_t W = gi.size(-1), rows = gi.numel() / W;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(), "scale_unpool2d_backward_cuda",
                                  [&] {
    if (kNails) {
      nails_backward_kernel<scalar_t><<<blocks_for(gi.numel(), kThreads), kThreads, 0, stream>>>(
          go.data_ptr<scalar_t>(), rows, W, s[0], s[1], gi.data_ptr<scalar_t>());
    } else {
      nearest_backward_kernel<scalar_t><<<blocks_for(gi.numel(), kThreads), kThreads, 0, stream>>>(
          go.data_ptr<scalar_t>(), rows, W, s[0], s[1], gi.data_ptr<scalar_t>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return gi;
}

at::Tensor nearest_unpool2d_cuda(const at::Tensor& input, at::IntArrayRef scale_factor) {
  return unpool_forward_cuda<false>(input, scale_factor);
}
at::Tensor nearest_unpool2d_backward_cuda(const at::Tensor& grad_output, at::IntArrayRef scale_factor) {
  return unpool_backward_cuda<false>(grad_output, scale_factor);
}
at::Tensor bed_of_nails_unpool2d_cuda(const at::Tensor& input, at::IntArrayRef scale_factor) {
  return unpool_forward_cuda<true>(input, scale_factor);
}
at::Tensor bed_of_nails_unpool2d_backward_cuda(const at::Tensor& grad_output, at::IntArrayRef scale_factor) {
  return unpool_backward_cuda<true>(grad_output, scale_factor);
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CUDA, m) {
  m.impl("nearest_unpool2d", &pydetops::nearest_unpool2d_cuda);
  m.impl("_nearest_unpool2d_backward", &pydetops::nearest_unpool2d_backward_cuda);
  m.impl("bed_of_nails_unpool2d", &pydetops::bed_of_nails_unpool2d_cuda);
  m.impl("_bed_of_nails_unpool2d_backward", &pydetops::bed_of_nails_unpool2d_backward_cuda);
}
