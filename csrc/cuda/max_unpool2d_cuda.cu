// CUDA kernels of max_unpool2d and its backward, with the CPU kernel's rules:
// for duplicate indices within a plane the LAST input (row-major) wins,
// deterministically: a first pass takes, per output position, the largest
// input position naming it (atomicMax, order-independent); the forward then
// gathers out[j] = input[winner[j]] (0 where none), the backward
// grad_input[i] = grad_output[indices[i]] for winners, 0 for the losers.
// Out-of-range indices are never used; they set a flag, read back once after
// the kernels (the one device-to-host copy), and the call raises ValueError as
// on the CPU.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/checks.h"
#include "ops/max_unpool2d.h"

namespace pydetops {
namespace {

constexpr int kThreads = 256;

inline unsigned int blocks_for(int64_t n, int threads) {
  return static_cast<unsigned int>(std::min<int64_t>(std::max<int64_t>(1, (n + threads - 1) / threads), 1 << 30));
}

// winner: [planes, plane_out] filled with -1.
__global__ void winner_kernel(const int64_t* __restrict__ idx, int64_t planes, int64_t plane_in, int64_t plane_out,
                              long long* __restrict__ winner, int* __restrict__ bad) {
  const int64_t total = planes * plane_in;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t pl = e / plane_in, i = e % plane_in;
    const int64_t j = idx[e];
    if (j >= 0 && j < plane_out) {
      atomicMax(winner + pl * plane_out + j, static_cast<long long>(i));
    } else {
      *bad = 1;
    }
  }
}

template <typename scalar_t>
__global__ void gather_forward_kernel(const scalar_t* __restrict__ x, const long long* __restrict__ winner,
                                      int64_t planes, int64_t plane_in, int64_t plane_out, scalar_t* __restrict__ out) {
  const int64_t total = planes * plane_out;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const long long w = winner[e];
    out[e] = w >= 0 ? x[(e / plane_out) * plane_in + w] : scalar_t(0);
  }
}

template <typename scalar_t>
__global__ void gather_backward_kernel(const scalar_t* __restrict__ go, const int64_t* __restrict__ idx,
                                       const long long* __restrict__ winner, int64_t planes, int64_t plane_in,
                                       int64_t plane_out, scalar_t* __restrict__ gi) {
  const int64_t total = planes * plane_in;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t pl = e / plane_in, i = e % plane_in;
    const int64_t j = idx[e];
    const bool ok = j >= 0 && j < plane_out && winner[pl * plane_out + j] == static_cast<long long>(i);
    gi[e] = ok ? go[pl * plane_out + j] : scalar_t(0);
  }
}

// Raises as the CPU kernel does, naming the first bad index (row-major).
void raise_if_bad(const at::Tensor& bad, const at::Tensor& idx, int64_t plane_out, int64_t h_out, int64_t w_out) {
  if (bad.item<int>() == 0) return;  // the one device-to-host copy
  const at::Tensor flat = idx.reshape({-1});
  const at::Tensor mask = (flat < 0) | (flat >= plane_out);
  const int64_t first = flat.masked_select(mask)[0].item<int64_t>();
  TORCH_CHECK_VALUE(false, "Found an invalid max index in indices: ", first, " (output volumes are of size ", h_out,
                    "x", w_out, ")");
}

at::Tensor max_unpool2d_cuda(const at::Tensor& input, const at::Tensor& indices, at::IntArrayRef kernel_size,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::OptionalIntArrayRef output_size) {
  const auto out_hw = check_max_unpool2d_args(input, indices, kernel_size, stride, padding, output_size);
  check_same_device(input, "input", indices, "indices");
  const c10::cuda::CUDAGuard guard(input.device());
  std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
  shape[shape.size() - 2] = out_hw[0];
  shape[shape.size() - 1] = out_hw[1];
  at::Tensor out = at::empty(shape, input.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t plane_in = input.size(-2) * input.size(-1), plane_out = out_hw[0] * out_hw[1];
  const int64_t planes = plane_in == 0 ? 0 : input.numel() / plane_in;
  if (planes == 0 || plane_in == 0 || plane_out == 0) {
    out.zero_();
    if (planes > 0 && plane_in > 0) {  // every index is out of range of an empty plane
      const at::Tensor idx = indices.contiguous();
      raise_if_bad(at::ones({1}, indices.options().dtype(at::kInt)), idx, plane_out, out_hw[0], out_hw[1]);
    }
    return out;
  }
  const at::Tensor x = input.contiguous();
  const at::Tensor idx = indices.contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor winner = at::full({planes * plane_out}, -1, idx.options());
  at::Tensor bad = at::zeros({1}, idx.options().dtype(at::kInt));
  winner_kernel<<<blocks_for(planes * plane_in, kThreads), kThreads, 0, stream>>>(
      idx.data_ptr<int64_t>(), planes, plane_in, plane_out, reinterpret_cast<long long*>(winner.data_ptr<int64_t>()),
      bad.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "max_unpool2d_cuda", [&] {
    gather_forward_kernel<scalar_t><<<blocks_for(planes * plane_out, kThreads), kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), reinterpret_cast<const long long*>(winner.data_ptr<int64_t>()), planes, plane_in,
        plane_out, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  raise_if_bad(bad, idx, plane_out, out_hw[0], out_hw[1]);
  return out;
}

at::Tensor max_unpool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& indices) {
  check_max_unpool2d_backward_args(grad_output, indices);
  check_same_device(grad_output, "grad_output", indices, "indices");
  const c10::cuda::CUDAGuard guard(grad_output.device());
  const int64_t h_out = grad_output.size(-2), w_out = grad_output.size(-1);
  const int64_t plane_out = h_out * w_out;
  const int64_t plane_in = indices.size(-2) * indices.size(-1);
  at::Tensor grad_input =
      at::empty(indices.sizes(), grad_output.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t planes = plane_in == 0 ? 0 : indices.numel() / plane_in;
  if (planes == 0) return grad_input;
  const at::Tensor go = grad_output.contiguous();
  const at::Tensor idx = indices.contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor winner = at::full({std::max<int64_t>(planes * plane_out, 1)}, -1, idx.options());
  at::Tensor bad = at::zeros({1}, idx.options().dtype(at::kInt));
  winner_kernel<<<blocks_for(planes * plane_in, kThreads), kThreads, 0, stream>>>(
      idx.data_ptr<int64_t>(), planes, plane_in, plane_out, reinterpret_cast<long long*>(winner.data_ptr<int64_t>()),
      bad.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(), "max_unpool2d_backward_cuda",
                                  [&] {
    gather_backward_kernel<scalar_t><<<blocks_for(planes * plane_in, kThreads), kThreads, 0, stream>>>(
        go.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(), reinterpret_cast<const long long*>(winner.data_ptr<int64_t>()),
        planes, plane_in, plane_out, grad_input.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  raise_if_bad(bad, idx, plane_out, h_out, w_out);
  return grad_input;
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CUDA, m) {
  m.impl("max_unpool2d", &pydetops::max_unpool2d_cuda);
  m.impl("_max_unpool2d_backward", &pydetops::max_unpool2d_backward_cuda);
}
