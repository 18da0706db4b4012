// CUDA kernels of ps_roi_align (position-sensitive RoIAlign) and its backward,
// on the geometry of common/ps_roi_align_grid.h and the taps of
// common/bilinear.h shared with the CPU kernels. Bin (i, j) of output channel c
// reads input channel c_in = (c * ph + i) * pw + j.
//
// The batch indices are checked by check_roi_batch_indices (one small
// device-to-host copy, as the CPU path raises on them too).
//
// Forward: one thread per output element; the input is read in place through
// its strides (channels-last needs no copy; consecutive threads then read
// consecutive channels).
// Backward:
//  * default: one thread per grad element scatters its taps with atomicAdd
//    into an accumulator in the accumulate type;
//  * deterministic (torch.use_deterministic_algorithms(True)): one thread per
//    grad_input plane (image, c_in). Only bin c_in % (ph * pw) of output channel
//    c_in / (ph * pw) reads that plane, so the thread visits the image's RoIs in
//    increasing order and adds their taps itself: the CPU kernel's order, and
//    products rounded on their own (no FMA), so bit-identical to the CPU.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "common/bilinear.h"
#include "common/checks.h"
#include "common/ps_roi_align_grid.h"
#include "ops/ps_roi_align.h"
#include "ops/psroi_spp_common.h"

namespace pydetops {
namespace {

constexpr int kThreads = 256;

inline unsigned int blocks_for(int64_t n, int threads) {
  return static_cast<unsigned int>(std::min<int64_t>(std::max<int64_t>(1, (n + threads - 1) / threads), 1 << 30));
}

__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

// The sampling grid of bin (i, j) of a RoI, as the CPU's bin_taps() builds it.
template <typename T>
struct PSBin {
  T hstart, wstart, bin_h, bin_w;
  int64_t grid_h, grid_w;
  int64_t y0, y1, x0, x1;  // inclusive sample index ranges
  int64_t count;           // grid_h * grid_w; 0: the bin is 0 and takes no gradient
};

template <typename T>
__device__ inline PSBin<T> ps_bin(const T* r, T scale, int64_t i, int64_t j, int64_t PH, int64_t PW, int64_t H,
                                  int64_t W, int64_t sampling_ratio) {
  PSBin<T> b;
  // Products rounded on their own (no FMA), as on the CPU.
  const T start_w = mul_rn(r[1], scale) - T(0.5);
  const T start_h = mul_rn(r[2], scale) - T(0.5);
  const T end_w = mul_rn(r[3], scale) - T(0.5);
  const T end_h = mul_rn(r[4], scale) - T(0.5);
  b.bin_h = (end_h - start_h) / static_cast<T>(PH);
  b.bin_w = (end_w - start_w) / static_cast<T>(PW);
  b.grid_h = ps_align_grid_size(b.bin_h, sampling_ratio);
  b.grid_w = ps_align_grid_size(b.bin_w, sampling_ratio);
  b.count = 0;
  b.y0 = b.x0 = 0;
  b.y1 = b.x1 = -1;
  b.hstart = mul_rn(static_cast<T>(i), b.bin_h) + start_h;
  b.wstart = mul_rn(static_cast<T>(j), b.bin_w) + start_w;
  if (b.grid_h == 0 || b.grid_w == 0 || H == 0 || W == 0) return b;
  ps_align_sample_range(b.hstart, b.bin_h, b.grid_h, H, &b.y0, &b.y1);
  ps_align_sample_range(b.wstart, b.bin_w, b.grid_w, W, &b.x0, &b.x1);
  b.count = b.grid_h * b.grid_w;
  return b;
}

template <typename scalar_t, typename acc_t>
__global__ void ps_roi_align_forward_kernel(const scalar_t* __restrict__ input, int64_t sN, int64_t sC, int64_t sH,
                                            int64_t sW, int64_t H, int64_t W, const acc_t* __restrict__ rois,
                                            acc_t scale, int64_t K, int64_t C_out, int64_t PH, int64_t PW,
                                            int64_t sampling_ratio, scalar_t* __restrict__ out) {
  const int64_t bins = PH * PW;
  const int64_t total = K * C_out * bins;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t bin = idx % bins;
    const int64_t c = (idx / bins) % C_out;
    const int64_t k = idx / (bins * C_out);
    const acc_t* r = rois + 5 * k;
    const PSBin<acc_t> b = ps_bin(r, scale, bin / PW, bin % PW, PH, PW, H, W, sampling_ratio);
    if (b.count == 0) {
      out[idx] = scalar_t(0);
      continue;
    }
    const scalar_t* plane = input + static_cast<int64_t>(r[0]) * sN + (c * bins + bin) * sC;
    acc_t sum = 0;
    for (int64_t iy = b.y0; iy <= b.y1; ++iy) {
      const acc_t y = ps_align_sample(b.hstart, b.bin_h, b.grid_h, iy);
      for (int64_t ix = b.x0; ix <= b.x1; ++ix) {
        const acc_t x = ps_align_sample(b.wstart, b.bin_w, b.grid_w, ix);
        const BilinearTap<acc_t> t = bilinear_tap(y, x, H, W);
        if (t.valid) sum += bilinear_value<acc_t>(t, plane, sH, sW);
      }
    }
    out[idx] = static_cast<scalar_t>(sum / static_cast<acc_t>(b.count));
  }
}

// Default backward: grad [K, C_out, PH, PW] acc_t contiguous; gi [N, C, H, W]
// acc_t zero-filled.
template <typename acc_t>
__global__ void ps_roi_align_backward_atomic_kernel(const acc_t* __restrict__ grad, const acc_t* __restrict__ rois,
                                                    acc_t scale, int64_t K, int64_t C, int64_t C_out, int64_t H,
                                                    int64_t W, int64_t PH, int64_t PW, int64_t sampling_ratio,
                                                    acc_t* __restrict__ gi) {
  const int64_t bins = PH * PW;
  const int64_t total = K * C_out * bins;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t bin = idx % bins;
    const int64_t c = (idx / bins) % C_out;
    const int64_t k = idx / (bins * C_out);
    const acc_t* r = rois + 5 * k;
    const PSBin<acc_t> b = ps_bin(r, scale, bin / PW, bin % PW, PH, PW, H, W, sampling_ratio);
    if (b.count == 0) continue;
    const acc_t v = grad[idx] / static_cast<acc_t>(b.count);
    acc_t* plane = gi + (static_cast<int64_t>(r[0]) * C + c * bins + bin) * H * W;
    for (int64_t iy = b.y0; iy <= b.y1; ++iy) {
      const acc_t y = ps_align_sample(b.hstart, b.bin_h, b.grid_h, iy);
      for (int64_t ix = b.x0; ix <= b.x1; ++ix) {
        const acc_t x = ps_align_sample(b.wstart, b.bin_w, b.grid_w, ix);
        const BilinearTap<acc_t> t = bilinear_tap(y, x, H, W);
        if (!t.valid) continue;
        atomicAdd(plane + t.y_low * W + t.x_low, t.w_ll * v);
        atomicAdd(plane + t.y_low * W + t.x_high, t.w_lh * v);
        atomicAdd(plane + t.y_high * W + t.x_low, t.w_hl * v);
        atomicAdd(plane + t.y_high * W + t.x_high, t.w_hh * v);
      }
    }
  }
}

// Deterministic backward: one thread per plane (n, c_in) of gi (acc_t,
// zero-filled); the RoIs of image n are roi_order[offsets[n], offsets[n + 1]).
template <typename acc_t>
__global__ void ps_roi_align_backward_owner_kernel(const acc_t* __restrict__ grad, const acc_t* __restrict__ rois,
                                                   const int64_t* __restrict__ roi_order,
                                                   const int64_t* __restrict__ offsets, acc_t scale, int64_t N,
                                                   int64_t C, int64_t C_out, int64_t H, int64_t W, int64_t PH,
                                                   int64_t PW, int64_t sampling_ratio, acc_t* __restrict__ gi) {
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
      const acc_t* r = rois + 5 * k;
      const PSBin<acc_t> b = ps_bin(r, scale, bin / PW, bin % PW, PH, PW, H, W, sampling_ratio);
      if (b.count == 0) continue;
      const acc_t v = grad[(k * C_out + c) * bins + bin] / static_cast<acc_t>(b.count);
      for (int64_t iy = b.y0; iy <= b.y1; ++iy) {
        const acc_t y = ps_align_sample(b.hstart, b.bin_h, b.grid_h, iy);
        for (int64_t ix = b.x0; ix <= b.x1; ++ix) {
          const acc_t x = ps_align_sample(b.wstart, b.bin_w, b.grid_w, ix);
          const BilinearTap<acc_t> t = bilinear_tap(y, x, H, W);
          if (!t.valid) continue;
          acc_t* q0 = plane + t.y_low * W + t.x_low;
          *q0 = *q0 + mul_rn(t.w_ll, v);
          acc_t* q1 = plane + t.y_low * W + t.x_high;
          *q1 = *q1 + mul_rn(t.w_lh, v);
          acc_t* q2 = plane + t.y_high * W + t.x_low;
          *q2 = *q2 + mul_rn(t.w_hl, v);
          acc_t* q3 = plane + t.y_high * W + t.x_high;
          *q3 = *q3 + mul_rn(t.w_hh, v);
        }
      }
    }
  }
}

at::Tensor ps_roi_align_cuda(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                             int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio) {
  const int64_t C_out = check_ps_roi_args(input, rois, spatial_scale, pooled_height, pooled_width);
  check_sampling_ratio(sampling_ratio);
  const c10::cuda::CUDAGuard guard(input.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto acc_type = accumulate_type_of(input.scalar_type());
  const at::Tensor r = rois.to(acc_type).contiguous();
  check_roi_batch_indices(r, input.size(0));
  at::Tensor output = at::empty({rois.size(0), C_out, pooled_height, pooled_width}, input.options());
  if (output.numel() == 0) return output;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "ps_roi_align_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    ps_roi_align_forward_kernel<scalar_t, acc_t><<<blocks_for(output.numel(), kThreads), kThreads, 0, stream>>>(
        input.data_ptr<scalar_t>(), input.stride(0), input.stride(1), input.stride(2), input.stride(3),
        input.size(2), input.size(3), r.data_ptr<acc_t>(), static_cast<acc_t>(spatial_scale), rois.size(0), C_out,
        pooled_height, pooled_width, sampling_ratio, output.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

// RoIs of each image in increasing order: (order, offsets[N + 1]). The batch
// indices were checked: truncated, each is in [0, N).
std::pair<at::Tensor, at::Tensor> rois_by_image(const at::Tensor& r, int64_t N) {
  const at::Tensor batch = r.select(1, 0).trunc().to(at::kLong);
  const auto sorted = at::sort(batch, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor offsets =
      at::searchsorted(std::get<0>(sorted).contiguous(), at::arange(N + 1, batch.options())).contiguous();
  return {std::get<1>(sorted).contiguous(), offsets};
}

at::Tensor ps_roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                      int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                                      int64_t batch_size, int64_t channels, int64_t height, int64_t width) {
  const int64_t C_out = check_ps_roi_backward_args(grad, rois, spatial_scale, pooled_height, pooled_width,
                                                  batch_size, channels, height, width, "_ps_roi_align_backward");
  check_sampling_ratio(sampling_ratio);
  const c10::cuda::CUDAGuard guard(grad.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto acc_type = accumulate_type_of(grad.scalar_type());
  const at::Tensor r = rois.to(acc_type).contiguous();
  check_roi_batch_indices(r, batch_size);
  at::Tensor gi = at::zeros({batch_size, channels, height, width}, grad.options().dtype(acc_type));
  if (grad.numel() > 0 && gi.numel() > 0) {
    const at::Tensor g = grad.to(acc_type).contiguous();
    const bool deterministic = at::globalContext().deterministicAlgorithms();
    AT_DISPATCH_FLOATING_TYPES(acc_type, "ps_roi_align_backward_cuda", [&] {
      const scalar_t scale = static_cast<scalar_t>(spatial_scale);
      if (!deterministic) {
        ps_roi_align_backward_atomic_kernel<scalar_t><<<blocks_for(g.numel(), kThreads), kThreads, 0, stream>>>(
            g.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(), scale, rois.size(0), channels, C_out, height, width,
            pooled_height, pooled_width, sampling_ratio, gi.data_ptr<scalar_t>());
      } else {
        const auto groups = rois_by_image(r, batch_size);
        ps_roi_align_backward_owner_kernel<scalar_t>
            <<<blocks_for(batch_size * channels, 64), 64, 0, stream>>>(
                g.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(), groups.first.data_ptr<int64_t>(),
                groups.second.data_ptr<int64_t>(), scale, batch_size, channels, C_out, height, width, pooled_height,
                pooled_width, sampling_ratio, gi.data_ptr<scalar_t>());
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return gi.to(grad.scalar_type());
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CUDA, m) {
  m.impl("ps_roi_align", &pydetops::ps_roi_align_cuda);
  m.impl("_ps_roi_align_backward", &pydetops::ps_roi_align_backward_cuda);
}
