// CUDA kernels of sigmoid_focal_loss and its backward (common/focal_loss_math.h),
// one thread per element, float16/bfloat16 computed in float32. 'mean'/'sum'
// write the per-element losses in the compute type and reduce them with
// at::sum (a fixed reduction tree: the same result on every run); the
// backward reads the scalar upstream gradient on the device (no host sync).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "common/checks.h"
#include "common/focal_loss_math.h"
#include "ops/sigmoid_focal_loss.h"

namespace pydetops {
namespace {

inline unsigned int blocks_for(int64_t n, int threads) {
  return static_cast<unsigned int>(std::min<int64_t>(std::max<int64_t>(1, (n + threads - 1) / threads), 1 << 20));
}

template <typename in_t, typename acc_t, typename out_t>
__global__ void focal_forward_kernel(const in_t* __restrict__ x, const in_t* __restrict__ t, int64_t n, acc_t alpha,
                                     acc_t gamma, out_t* __restrict__ out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = static_cast<out_t>(focal::loss<acc_t>(static_cast<acc_t>(x[i]), static_cast<acc_t>(t[i]), alpha, gamma));
  }
}

// g: per-element upstream gradient (g_stride 1) or one value (g_stride 0) times scale.
template <typename in_t, typename acc_t>
__global__ void focal_backward_kernel(const in_t* __restrict__ x, const in_t* __restrict__ t, int64_t n, acc_t alpha,
                                      acc_t gamma, const acc_t* __restrict__ g, int64_t g_stride, acc_t scale,
                                      in_t* __restrict__ gx_out, in_t* __restrict__ gt_out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc_t gx, gt;
    focal::loss_backward<acc_t>(static_cast<acc_t>(x[i]), static_cast<acc_t>(t[i]), alpha, gamma,
                                g[i * g_stride] * scale, &gx, &gt);
    gx_out[i] = static_cast<in_t>(gx);
    gt_out[i] = static_cast<in_t>(gt);
  }
}

at::Tensor sigmoid_focal_loss_cuda(const at::Tensor& inputs, const at::Tensor& targets, double alpha, double gamma,
                                   c10::string_view reduction) {
  check_sigmoid_focal_loss_args(inputs, targets, alpha, gamma, reduction);
  const c10::cuda::CUDAGuard guard(inputs.device());
  const LossReduction red = parse_loss_reduction(reduction);
  const int64_t n = inputs.numel();
  const at::Tensor x = inputs.contiguous();
  const at::Tensor t = targets.to(inputs.scalar_type()).contiguous();
  const auto acc_type = accumulate_type_of(inputs.scalar_type());
  const auto mem = inputs.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor out = red == LossReduction::None ? at::empty(inputs.sizes(), mem) : at::empty({n}, inputs.options().dtype(acc_type));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (n > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, inputs.scalar_type(), "sigmoid_focal_loss_cuda", [&] {
      using in_t = scalar_t;
      AT_DISPATCH_FLOATING_TYPES(acc_type, "sigmoid_focal_loss_cuda_acc", [&] {
        using acc_t = scalar_t;
        if (red == LossReduction::None) {
          focal_forward_kernel<in_t, acc_t, in_t><<<blocks_for(n, 256), 256, 0, stream>>>(
              x.data_ptr<in_t>(), t.data_ptr<in_t>(), n, static_cast<acc_t>(alpha), static_cast<acc_t>(gamma),
              out.data_ptr<in_t>());
        } else {
          focal_forward_kernel<in_t, acc_t, acc_t><<<blocks_for(n, 256), 256, 0, stream>>>(
              x.data_ptr<in_t>(), t.data_ptr<in_t>(), n, static_cast<acc_t>(alpha), static_cast<acc_t>(gamma),
              out.data_ptr<acc_t>());
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  if (red == LossReduction::None) return out;
  at::Tensor total = red == LossReduction::Sum ? out.sum() : out.mean();
  return total.to(inputs.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> sigmoid_focal_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& inputs,
                                                                    const at::Tensor& targets, double alpha,
                                                                    double gamma, c10::string_view reduction) {
  check_sigmoid_focal_loss_args(inputs, targets, alpha, gamma, reduction);
  check_sigmoid_focal_loss_grad(grad, inputs, reduction);
  const c10::cuda::CUDAGuard guard(inputs.device());
  const LossReduction red = parse_loss_reduction(reduction);
  const int64_t n = inputs.numel();
  const at::Tensor x = inputs.contiguous();
  const at::Tensor t = targets.to(inputs.scalar_type()).contiguous();
  const auto acc_type = accumulate_type_of(inputs.scalar_type());
  const auto mem = inputs.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor grad_inputs = at::empty(inputs.sizes(), mem);
  at::Tensor grad_targets = at::empty(inputs.sizes(), mem);
  const at::Tensor g = grad.to(acc_type).contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (n > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, inputs.scalar_type(), "sigmoid_focal_loss_backward_cuda",
                                    [&] {
      using in_t = scalar_t;
      AT_DISPATCH_FLOATING_TYPES(acc_type, "sigmoid_focal_loss_backward_cuda_acc", [&] {
        using acc_t = scalar_t;
        const acc_t scale = red == LossReduction::Mean ? acc_t(1) / static_cast<acc_t>(n) : acc_t(1);
        focal_backward_kernel<in_t, acc_t><<<blocks_for(n, 256), 256, 0, stream>>>(
            x.data_ptr<in_t>(), t.data_ptr<in_t>(), n, static_cast<acc_t>(alpha), static_cast<acc_t>(gamma),
            g.data_ptr<acc_t>(), red == LossReduction::None ? 1 : 0, scale, grad_inputs.data_ptr<in_t>(),
            grad_targets.data_ptr<in_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  return {grad_inputs, grad_targets.to(targets.scalar_type())};
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CUDA, m) {
  m.impl("sigmoid_focal_loss", &pydetops::sigmoid_focal_loss_cuda);
  m.impl("_sigmoid_focal_loss_backward", &pydetops::sigmoid_focal_loss_backward_cuda);
}
