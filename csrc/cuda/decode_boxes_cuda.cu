// CUDA kernels of decode_boxes and its backward, with coding::decode_box /
// decode_box_backward (common/box_coding.h): float16/bfloat16 codes are
// converted per element to float32, float64 computes in float64.
//
// Forward: one thread per (box, class) pair, 64-bit indices.
// Backward: one thread per pair writes the code gradient and, when K > 1, its
// pair's share of the box gradient into a [N, K, 4] scratch; a second kernel
// sums each box's K shares in class order (the CPU kernel's order): no
// atomics, the same result on every run. With K == 1 one kernel does both.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "common/box_coding.h"
#include "common/checks.h"
#include "ops/decode_boxes.h"

namespace pydetops {
namespace {

inline unsigned int blocks_for(int64_t n, int threads) {
  return static_cast<unsigned int>(std::min<int64_t>(std::max<int64_t>(1, (n + threads - 1) / threads), 1 << 20));
}

// codes: [n * k, 4] (in_t); boxes: [n, 4] (in_t); out like codes.
template <typename in_t, typename acc_t>
__global__ void decode_kernel(const in_t* __restrict__ codes, const in_t* __restrict__ boxes, int64_t pairs, int64_t k,
                              coding::DecodeParams<acc_t> p, in_t* __restrict__ out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < pairs;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / k;
    acc_t box[4], d[4], r[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      box[j] = static_cast<acc_t>(boxes[4 * row + j]);
      d[j] = static_cast<acc_t>(codes[4 * i + j]);
    }
    coding::decode_box<acc_t>(box, d, p, r);
#pragma unroll
    for (int j = 0; j < 4; ++j) out[4 * i + j] = static_cast<in_t>(r[j]);
  }
}

// gbox_out: [n * k, 4] per-pair box gradients (k > 1) or [n, 4] directly (k == 1).
template <typename in_t, typename acc_t>
__global__ void decode_backward_kernel(const in_t* __restrict__ codes, const in_t* __restrict__ grad,
                                       const in_t* __restrict__ boxes, int64_t pairs, int64_t k,
                                       coding::DecodeParams<acc_t> p, in_t* __restrict__ gcodes,
                                       acc_t* __restrict__ gbox_out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < pairs;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / k;
    acc_t box[4], d[4], go[4], gd[4], gb[4] = {0, 0, 0, 0};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      box[j] = static_cast<acc_t>(boxes[4 * row + j]);
      d[j] = static_cast<acc_t>(codes[4 * i + j]);
      go[j] = static_cast<acc_t>(grad[4 * i + j]);
    }
    coding::decode_box_backward<acc_t>(box, d, p, go, gd, gb);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      gcodes[4 * i + j] = static_cast<in_t>(gd[j]);
      gbox_out[4 * i + j] = gb[j];
    }
  }
}

// gb[row][j] = sum over classes c (in order) of part[row * k + c][j].
template <typename acc_t>
__global__ void sum_classes_kernel(const acc_t* __restrict__ part, int64_t n, int64_t k, acc_t* __restrict__ gb) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < 4 * n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = e / 4, j = e % 4;
    acc_t s = 0;
    for (int64_t c = 0; c < k; ++c) s += part[(row * k + c) * 4 + j];
    gb[e] = s;
  }
}

at::Tensor decode_boxes_cuda(const at::Tensor& rel_codes, const at::Tensor& boxes, at::ArrayRef<double> weights,
                             double clamp, at::OptionalIntArrayRef image_size) {
  check_decode_boxes_args(rel_codes, boxes, weights, clamp, image_size);
  const c10::cuda::CUDAGuard guard(rel_codes.device());
  const int64_t n = rel_codes.size(0), k = rel_codes.size(1) / 4;
  at::Tensor out = at::empty({n, 4 * k}, rel_codes.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const at::Tensor codes = rel_codes.contiguous();
  // As torchvision (and the CPU kernel): the boxes are cast to the codes' dtype first.
  const at::Tensor b = boxes.to(rel_codes.scalar_type()).contiguous();
  const auto acc_type = accumulate_type_of(rel_codes.scalar_type());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t pairs = n * k;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rel_codes.scalar_type(), "decode_boxes_cuda", [&] {
    using in_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(acc_type, "decode_boxes_cuda_acc", [&] {
      using acc_t = scalar_t;
      decode_kernel<in_t, acc_t><<<blocks_for(pairs, 256), 256, 0, stream>>>(
          codes.data_ptr<in_t>(), b.data_ptr<in_t>(), pairs, k, make_decode_params<acc_t>(weights, clamp, image_size),
          out.data_ptr<in_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> decode_boxes_backward_cuda(const at::Tensor& grad, const at::Tensor& rel_codes,
                                                              const at::Tensor& boxes, at::ArrayRef<double> weights,
                                                              double clamp, at::OptionalIntArrayRef image_size) {
  check_decode_boxes_args(rel_codes, boxes, weights, clamp, image_size);
  TORCH_CHECK_VALUE(grad.sizes() == rel_codes.sizes(), "grad must have the shape of decode_boxes' output ",
                    rel_codes.sizes(), ", got ", grad.sizes());
  check_same_device(grad, "grad", rel_codes, "rel_codes");
  const c10::cuda::CUDAGuard guard(rel_codes.device());
  const int64_t n = rel_codes.size(0), k = rel_codes.size(1) / 4;
  const auto acc_type = accumulate_type_of(rel_codes.scalar_type());
  const auto boxes_grad_type = boxes.is_floating_point() ? boxes.scalar_type() : acc_type;
  at::Tensor grad_codes = at::empty({n, 4 * k}, rel_codes.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor grad_boxes = at::zeros({n, 4}, rel_codes.options().dtype(acc_type));
  if (n > 0 && k > 0) {
    const at::Tensor codes = rel_codes.contiguous();
    const at::Tensor g = grad.to(rel_codes.scalar_type()).contiguous();
    const at::Tensor b = boxes.to(rel_codes.scalar_type()).contiguous();
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const int64_t pairs = n * k;
    at::Tensor part = k == 1 ? grad_boxes : at::empty({pairs, 4}, grad_boxes.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rel_codes.scalar_type(), "decode_boxes_backward_cuda",
                                    [&] {
      using in_t = scalar_t;
      AT_DISPATCH_FLOATING_TYPES(acc_type, "decode_boxes_backward_cuda_acc", [&] {
        using acc_t = scalar_t;
        decode_backward_kernel<in_t, acc_t><<<blocks_for(pairs, 256), 256, 0, stream>>>(
            codes.data_ptr<in_t>(), g.data_ptr<in_t>(), b.data_ptr<in_t>(), pairs, k,
            make_decode_params<acc_t>(weights, clamp, image_size), grad_codes.data_ptr<in_t>(),
            part.data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        if (k > 1) {
          sum_classes_kernel<acc_t><<<blocks_for(4 * n, 256), 256, 0, stream>>>(part.data_ptr<acc_t>(), n, k,
                                                                                grad_boxes.data_ptr<acc_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      });
    });
  } else {
    grad_codes.zero_();
  }
  return {grad_codes, grad_boxes.to(boxes_grad_type)};
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CUDA, m) {
  m.impl("decode_boxes", &pydetops::decode_boxes_cuda);
  m.impl("_decode_boxes_backward", &pydetops::decode_boxes_backward_cuda);
}
