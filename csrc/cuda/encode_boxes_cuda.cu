// CUDA kernels of encode_boxes and its backward: one thread per box pair
// (64-bit indices), the arithmetic of coding::encode_box / encode_box_backward
// (common/box_coding.h) in float32 (float64 for float64).
//
// The weights tensor may live on the GPU: then the kernels read its four
// values there (converted to the compute type on the device), so there is no
// device-to-host copy. Weights on the CPU are read on the host.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "common/box_coding.h"
#include "common/checks.h"
#include "ops/encode_boxes.h"

namespace pydetops {
namespace {

inline unsigned int blocks_for(int64_t n, int threads) {
  return static_cast<unsigned int>(std::min<int64_t>(std::max<int64_t>(1, (n + threads - 1) / threads), 1 << 20));
}

// The weights: from device memory when wdev is set, else the host values.
template <typename acc_t>
__device__ inline coding::EncodeWeights<acc_t> load_weights(const acc_t* wdev, coding::EncodeWeights<acc_t> host) {
  if (wdev == nullptr) return host;
  return {wdev[0], wdev[1], wdev[2], wdev[3]};
}

// Host weights, or the device copy (in acc_type, on `device`) in `dev`.
struct WeightsArg {
  std::array<double, 4> host{1, 1, 1, 1};
  at::Tensor dev;
};

WeightsArg weights_arg(const at::Tensor& weights, const at::Device& device, at::ScalarType acc_type) {
  WeightsArg w;
  if (weights.is_cuda()) {
    w.dev = weights.detach().reshape({4}).to(device, acc_type).contiguous();
  } else {
    w.host = encode_weights_values(weights);  // CPU tensor: no device sync
  }
  return w;
}

template <typename acc_t>
coding::EncodeWeights<acc_t> host_weights(const WeightsArg& w) {
  return {static_cast<acc_t>(w.host[0]), static_cast<acc_t>(w.host[1]), static_cast<acc_t>(w.host[2]),
          static_cast<acc_t>(w.host[3])};
}

template <typename acc_t>
const acc_t* dev_weights(const WeightsArg& w) {
  return w.dev.defined() ? w.dev.data_ptr<acc_t>() : nullptr;
}

template <typename io_t, typename acc_t>
__global__ void encode_kernel(const io_t* __restrict__ r, const io_t* __restrict__ q, int64_t n,
                              const acc_t* __restrict__ wdev, coding::EncodeWeights<acc_t> whost,
                              io_t* __restrict__ out) {
  const coding::EncodeWeights<acc_t> wt = load_weights(wdev, whost);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc_t a[4], b[4], t[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      a[j] = static_cast<acc_t>(r[4 * i + j]);
      b[j] = static_cast<acc_t>(q[4 * i + j]);
    }
    coding::encode_box<acc_t>(a, b, wt, t);
#pragma unroll
    for (int j = 0; j < 4; ++j) out[4 * i + j] = static_cast<io_t>(t[j]);
  }
}

template <typename acc_t>
__global__ void encode_backward_kernel(const acc_t* __restrict__ r, const acc_t* __restrict__ q,
                                       const acc_t* __restrict__ g, int64_t n, const acc_t* __restrict__ wdev,
                                       coding::EncodeWeights<acc_t> whost, acc_t* __restrict__ gr,
                                       acc_t* __restrict__ gq) {
  const coding::EncodeWeights<acc_t> wt = load_weights(wdev, whost);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    coding::encode_box_backward<acc_t>(r + 4 * i, q + 4 * i, wt, g + 4 * i, gr + 4 * i, gq + 4 * i);
  }
}

at::Tensor encode_boxes_cuda(const at::Tensor& reference_boxes, const at::Tensor& proposals,
                             const at::Tensor& weights) {
  check_encode_boxes_args(reference_boxes, proposals, weights);
  const c10::cuda::CUDAGuard guard(reference_boxes.device());
  const auto out_type = encode_boxes_result_type(reference_boxes, proposals);
  const auto acc_type = accumulate_type_of(out_type);
  const int64_t n = reference_boxes.size(0);
  at::Tensor out = at::empty({n, 4}, reference_boxes.options().dtype(out_type));
  if (n == 0) return out;
  const WeightsArg w = weights_arg(weights, reference_boxes.device(), acc_type);
  const at::Tensor r = reference_boxes.to(out_type).contiguous();
  const at::Tensor q = proposals.to(out_type).contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_type, "encode_boxes_cuda", [&] {
    using io_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(acc_type, "encode_boxes_cuda_acc", [&] {
      using acc_t = scalar_t;
      encode_kernel<io_t, acc_t><<<blocks_for(n, 256), 256, 0, stream>>>(
          r.data_ptr<io_t>(), q.data_ptr<io_t>(), n, dev_weights<acc_t>(w), host_weights<acc_t>(w),
          out.data_ptr<io_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> encode_boxes_backward_cuda(const at::Tensor& grad,
                                                              const at::Tensor& reference_boxes,
                                                              const at::Tensor& proposals, const at::Tensor& weights) {
  check_encode_boxes_args(reference_boxes, proposals, weights);
  const int64_t n = reference_boxes.size(0);
  TORCH_CHECK_VALUE(grad.dim() == 2 && grad.size(0) == n && grad.size(1) == 4,
                    "grad must have the shape of encode_boxes' output [", n, ", 4], got ", grad.sizes());
  check_same_device(grad, "grad", reference_boxes, "reference_boxes");
  const c10::cuda::CUDAGuard guard(reference_boxes.device());
  const auto out_type = encode_boxes_result_type(reference_boxes, proposals);
  const auto acc_type = accumulate_type_of(out_type);
  at::Tensor grad_r = at::empty({n, 4}, reference_boxes.options().dtype(acc_type));
  at::Tensor grad_q = at::empty({n, 4}, reference_boxes.options().dtype(acc_type));
  if (n > 0) {
    const WeightsArg w = weights_arg(weights, reference_boxes.device(), acc_type);
    // As the CPU kernel: round the boxes to the output dtype first.
    const at::Tensor r = reference_boxes.to(out_type).to(acc_type).contiguous();
    const at::Tensor q = proposals.to(out_type).to(acc_type).contiguous();
    const at::Tensor g = grad.to(acc_type).contiguous();
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(acc_type, "encode_boxes_backward_cuda", [&] {
      using acc_t = scalar_t;
      encode_backward_kernel<acc_t><<<blocks_for(n, 256), 256, 0, stream>>>(
          r.data_ptr<acc_t>(), q.data_ptr<acc_t>(), g.data_ptr<acc_t>(), n, dev_weights<acc_t>(w),
          host_weights<acc_t>(w), grad_r.data_ptr<acc_t>(), grad_q.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  auto grad_type = [&](const at::Tensor& t) { return t.is_floating_point() ? t.scalar_type() : acc_type; };
  return {grad_r.to(grad_type(reference_boxes)), grad_q.to(grad_type(proposals))};
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CUDA, m) {
  m.impl("encode_boxes", &pydetops::encode_boxes_cuda);
  m.impl("_encode_boxes_backward", &pydetops::encode_boxes_backward_cuda);
}
