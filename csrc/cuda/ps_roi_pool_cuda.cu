// CUDA kernels of ps_roi_pool (position-sensitive average pooling, R-FCN) and
// its backward, on the bin geometry of common/roi_pool_bins.h shared with the
// CPU kernels. Bin (i, j) of output channel c averages input channel
// c_in = (c * ph + i) * pw + j over the bin's cells.
//
// The batch indices are checked by check_roi_batch_indices (one small
// device-to-host copy, as the CPU path raises on them too).
//
// Forward: one thread per output element, input read in place through its
// strides (channels-last needs no copy).
// Backward:
//  * default: one thread per grad element adds grad / area to each cell of its
//    bin with atomicAdd (accumulate type);
//  * deterministic (torch.use_deterministic_algorithms(True)): one thread per
//    grad_input plane (image, c_in), visiting the image's RoIs in increasing
//    order: the CPU kernel's additions in the CPU kernel's order, so
//    bit-identical to the CPU.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "common/checks.h"
#include "common/roi_pool_bins.h"
#include "ops/ps_roi_align.h"
#include "ops/ps_roi_pool.h"
#include "ops/psroi_spp_common.h"

namespace pydetops {
namespace {

constexpr int kThreads = 256;

inline unsigned int blocks_for(int64_t n, int threads) {
  return static_cast<unsigned int>(std::min<int64_t>(std::max<int64_t>(1, (n + threads - 1) / threads), 1 << 30));
}

struct Rect {
  BinRange h, w;
  __device__ bool empty() const { return h.empty() || w.empty(); }
};

// The CPU's bin_rect(): cells of bin (i, j) of the RoI r (5 values).
template <typename T>
__device__ inline Rect bin_rect(const T* r, T scale, int64_t i, int64_t j, int64_t PH, int64_t PW, int64_t H,
                                int64_t W) {
  const RoundedRoi rr = rounded_roi(r[1], r[2], r[3], r[4], scale, /*end_offset=*/0);
  if (!rr.valid) return Rect{BinRange{0, 0}, BinRange{0, 0}};
  return Rect{pool_bin_range<T>(rr.y0, rr.height, PH, i, ps_roi_pool_limit(H)),
              pool_bin_range<T>(rr.x0, rr.width, PW, j, ps_roi_pool_limit(W))};
}

template <typename scalar_t, typename acc_t>
__global__ void ps_roi_pool_forward_kernel(const scalar_t* __restrict__ input, int64_t sN, int64_t sC, int64_t sH,
                                           int64_t sW, int64_t H, int64_t W, const acc_t* __restrict__ rois,
                                           acc_t scale, int64_t K, int64_t C_out, int64_t PH, int64_t PW,
                                           scalar_t* __restrict__ out) {
  const int64_t bins = PH * PW;
  const int64_t total = K * C_out * bins;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t bin = idx % bins;
    const int64_t c = (idx / bins) % C_out;
    const int64_t k = idx / (bins * C_out);
    const acc_t* r = rois + 5 * k;
    const Rect rect = bin_rect(r, scale, bin / PW, bin % PW, PH, PW, H, W);
    if (rect.empty()) {
      out[idx] = scalar_t(0);
      continue;
    }
    const acc_t area = static_cast<acc_t>((rect.h.end - rect.h.start) * (rect.w.end - rect.w.start));
    const scalar_t* plane = input + static_cast<int64_t>(r[0]) * sN + (c * bins + bin) * sC;
    acc_t sum = 0;
    for (int64_t h = rect.h.start; h < rect.h.end; ++h)
      for (int64_t w = rect.w.start; w < rect.w.end; ++w) sum += static_cast<acc_t>(plane[h * sH + w * sW]);
    out[idx] = static_cast<scalar_t>(sum / area);
  }
}

template <typename acc_t>
__global__ void ps_roi_pool_backward_atomic_kernel(const acc_t* __restrict__ grad, const acc_t* __restrict__ rois,
                                                   acc_t scale, int64_t K, int64_t C, int64_t C_out, int64_t H,
                                                   int64_t W, int64_t PH, int64_t PW, acc_t* __restrict__ gi) {
  const int64_t bins = PH * PW;
  const int64_t total = K * C_out * bins;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t bin = idx % bins;
    const int64_t c = (idx / bins) % C_out;
    const int64_t k = idx / (bins * C_out);
    const acc_t* r = rois + 5 * k;
    const Rect rect = bin_rect(r, scale, bin / PW, bin % PW, PH, PW, H, W);
    if (rect.empty()) continue;
    const acc_t area = static_cast<acc_t>((rect.h.end - rect.h.start) * (rect.w.end - rect.w.start));
    const acc_t v = grad[idx] / area;
    acc_t* plane = gi + (static_cast<int64_t>(r[0]) * C + c * bins + bin) * H * W;
    for (int64_t h = rect.h.start; h < rect.h.end; ++h)
      for (int64_t w = rect.w.start; w < rect.w.end; ++w) atomicAdd(plane + h * W + w, v);
  }
}

template <typename acc_t>
__global__ void ps_roi_pool_backward_owner_kernel(const acc_t* __restrict__ grad, const acc_t* __restrict__ rois,
                                                  const int64_t* __restrict__ roi_order,
                                                  const int64_t* __restrict__ offsets, acc_t scale, int64_t N,
                                                  int64_t C, int64_t C_out, int64_t H, int64_t W, int64_t PH,
                                                  int64_t PW, acc_t* __restrict__ gi) {
  const int64_t bins = PH * PW;
  const int64_t total = N * C;
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < total;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = p / C, c_in = p % C;
    const int64_t c = c_in / bins, bin = c_in % bins;
    if (c >= C_out) continue;
    acc_t* plane = gi + p * H * W;
    for (int64_t q = offsets[n]; q < offsets[n + 1]; ++q) {
      const int64_t k = roi_order[q];
      const Rect rect = bin_rect(rois + 5 * k, scale, bin / PW, bin % PW, PH, PW, H, W);
      if (rect.empty()) continue;
      const acc_t area = static_cast<acc_t>((rect.h.end - rect.h.start) * (rect.w.end - rect.w.start));
      const acc_t v = grad[(k * C_out + c) * bins + bin] / area;
      for (int64_t h = rect.h.start; h < rect.h.end; ++h)
        for (int64_t w = rect.w.start; w < rect.w.end; ++w) plane[h * W + w] += v;
    }
  }
}

at::Tensor ps_roi_pool_cuda(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                            int64_t pooled_height, int64_t pooled_width) {
  const int64_t C_out = check_ps_roi_args(input, rois, spatial_scale, pooled_height, pooled_width);
  const c10::cuda::CUDAGuard guard(input.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto acc_type = accumulate_type_of(input.scalar_type());
  const at::Tensor r = rois.to(acc_type).contiguous();
  check_roi_batch_indices(r, input.size(0));
  at::Tensor output = at::empty({rois.size(0), C_out, pooled_height, pooled_width}, input.options());
  if (output.numel() == 0) return output;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "ps_roi_pool_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    ps_roi_pool_forward_kernel<scalar_t, acc_t><<<blocks_for(output.numel(), kThreads), kThreads, 0, stream>>>(
        input.data_ptr<scalar_t>(), input.stride(0), input.stride(1), input.stride(2), input.stride(3),
        input.size(2), input.size(3), r.data_ptr<acc_t>(), static_cast<acc_t>(spatial_scale), rois.size(0), C_out,
        pooled_height, pooled_width, output.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

at::Tensor ps_roi_pool_backward_cuda(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                     int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                     int64_t channels, int64_t height, int64_t width) {
  const int64_t C_out = check_ps_roi_backward_args(grad, rois, spatial_scale, pooled_height, pooled_width,
                                                  batch_size, channels, height, width, "_ps_roi_pool_backward");
  const c10::cuda::CUDAGuard guard(grad.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto acc_type = accumulate_type_of(grad.scalar_type());
  const at::Tensor r = rois.to(acc_type).contiguous();
  check_roi_batch_indices(r, batch_size);
  at::Tensor gi = at::zeros({batch_size, channels, height, width}, grad.options().dtype(acc_type));
  if (grad.numel() > 0 && gi.numel() > 0) {
    const at::Tensor g = grad.to(acc_type).contiguous();
    const bool deterministic = at::globalContext().deterministicAlgorithms();
    AT_DISPATCH_FLOATING_TYPES(acc_type, "ps_roi_pool_backward_cuda", [&] {
      const scalar_t scale = static_cast<scalar_t>(spatial_scale);
      if (!deterministic) {
        ps_roi_pool_backward_atomic_kernel<scalar_t><<<blocks_for(g.numel(), kThreads), kThreads, 0, stream>>>(
            g.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(), scale, rois.size(0), channels, C_out, height, width,
            pooled_height, pooled_width, gi.data_ptr<scalar_t>());
      } else {
        // RoIs of each image in increasing order (batch indices checked above).
        const at::Tensor batch = r.select(1, 0).trunc().to(at::kLong);
        const auto sorted = at::sort(batch, /*stable=*/true, /*dim=*/0, /*descending=*/false);
        const at::Tensor order = std::get<1>(sorted).contiguous();
        const at::Tensor offsets =
            at::searchsorted(std::get<0>(sorted).contiguous(), at::arange(batch_size + 1, batch.options()))
                .contiguous();
        ps_roi_pool_backward_owner_kernel<scalar_t><<<blocks_for(batch_size * channels, 64), 64, 0, stream>>>(
            g.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(), order.data_ptr<int64_t>(), offsets.data_ptr<int64_t>(),
            scale, batch_size, channels, C_out, height, width, pooled_height, pooled_width,
            gi.data_ptr<scalar_t>());
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return gi.to(grad.scalar_type());
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CUDA, m) {
  m.impl("ps_roi_pool", &pydetops::ps_roi_pool_cuda);
  m.impl("_ps_roi_pool_backward", &pydetops::ps_roi_pool_backward_cuda);
}
