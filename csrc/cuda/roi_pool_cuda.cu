// CUDA kernels of roi_pool (Fast R-CNN RoIPool, torchvision semantics; bin
// geometry from common/roi_math.h, shared with the CPU kernels) and its backward.
//
// A RoI whose batch index is not an integer in [0, N) (the CPU raises; here
// that would need a device-to-host copy) pools to zeros with argmax -1, so
// nothing is read or written out of bounds.
//
// Forward: one thread per output element, the channel fastest for
// channels-last input (read in place), the pooled width fastest otherwise.
// Backward:
//  * default: one thread per grad element adds it at its argmax (atomicAdd,
//    into an accumulator in the accumulate type);
//  * deterministic (torch.use_deterministic_algorithms(True)): gather, one
//    thread per grad_input element; it walks the RoIs of its image in
//    increasing order and, per RoI, the (at most a few) bins whose range holds
//    its pixel, adding grad where argmax points at it: the CPU kernel's order,
//    so the result is bit-identical to the CPU's as well as run to run.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cfloat>
#include <cmath>

#include "common/checks.h"
#include "common/roi_math.h"
#include "ops/roi_align.h"
#include "ops/roi_pool.h"

namespace pydetops {
namespace {

constexpr int kThreads = 256;

inline unsigned int blocks_for(int64_t n, int threads) {
  return static_cast<unsigned int>(std::min<int64_t>(std::max<int64_t>(1, (n + threads - 1) / threads), 1 << 30));
}

struct PoolGeom {
  RoIPoolBox box;
  int64_t batch;  // -1: invalid RoI
};

template <typename T>
__global__ void pool_geometry_kernel(const T* __restrict__ rois, int64_t K, int64_t N, double spatial_scale,
                                     PoolGeom* __restrict__ geom, int64_t* __restrict__ batch_key) {
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < K;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const T* r = rois + 5 * k;
    PoolGeom g;
    const double b = static_cast<double>(r[0]);
    g.box = roi_pool_box<T>(r[1], r[2], r[3], r[4], spatial_scale);
    const bool batch_ok = isfinite(b) && b == floor(b) && b >= 0.0 && b < static_cast<double>(N);
    g.batch = batch_ok ? static_cast<int64_t>(b) : -1;
    geom[k] = g;
    if (batch_key != nullptr) batch_key[k] = g.batch < 0 ? N : g.batch;
  }
}

template <typename scalar_t, typename acc_t, bool kChannelsFastest>
__global__ void roi_pool_forward_kernel(const scalar_t* __restrict__ input, int64_t sN, int64_t sC, int64_t sH,
                                        int64_t sW, int64_t C, int64_t H, int64_t W,
                                        const PoolGeom* __restrict__ geom, int64_t K, int64_t PH, int64_t PW,
                                        scalar_t* __restrict__ out, int32_t* __restrict__ argmax) {
  const int64_t total = K * C * PH * PW;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t k, c, ph, pw, t = idx;
    if (kChannelsFastest) {
      c = t % C; t /= C;
      pw = t % PW; t /= PW;
      ph = t % PH; k = t / PH;
    } else {
      pw = t % PW; t /= PW;
      ph = t % PH; t /= PH;
      c = t % C; k = t / C;
    }
    const int64_t o = ((k * C + c) * PH + ph) * PW + pw;
    const PoolGeom g = geom[k];
    int64_t hs, he, ws, we;
    roi_pool_bin<acc_t>(ph, PH, g.box.start_h, g.box.height, H, &hs, &he);
    roi_pool_bin<acc_t>(pw, PW, g.box.start_w, g.box.width, W, &ws, &we);
    if (g.batch < 0 || !g.box.valid || he <= hs || we <= ws) {
      out[o] = scalar_t(0);
      argmax[o] = -1;
      continue;
    }
    const scalar_t* plane = input + g.batch * sN + c * sC;
    acc_t m = static_cast<acc_t>(-FLT_MAX);
    int64_t best = -1;
    for (int64_t h = hs; h < he; ++h)
      for (int64_t w = ws; w < we; ++w) {
        const acc_t v = static_cast<acc_t>(plane[h * sH + w * sW]);
        if (v > m) {
          m = v;
          best = h * W + w;
        }
      }
    out[o] = static_cast<scalar_t>(m);
    argmax[o] = static_cast<int32_t>(best);
  }
}

// Default backward: grad and argmax [K, C, PH, PW] contiguous; gi [N, C, H, W]
// acc_t, zero-filled.
template <typename acc_t>
__global__ void roi_pool_backward_atomic_kernel(const acc_t* __restrict__ grad, const int32_t* __restrict__ argmax,
                                                const PoolGeom* __restrict__ geom, int64_t K, int64_t C, int64_t HW,
                                                int64_t PHW, acc_t* __restrict__ gi) {
  const int64_t total = K * C * PHW;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t pos = argmax[idx];
    if (pos < 0 || pos >= HW) continue;
    const int64_t kc = idx / PHW;
    const int64_t k = kc / C, c = kc % C;
    const int64_t n = geom[k].batch;
    if (n < 0) continue;
    atomicAdd(gi + (n * C + c) * HW + pos, grad[idx]);
  }
}

// The bins [*lo, *hi] (inclusive) of `pooled` over a RoI side (start, size)
// that may hold map index v: a superset, callers test each with roi_pool_bin.
__device__ inline void bins_holding(int64_t v, int64_t start, int64_t size, int64_t pooled, int64_t* lo,
                                    int64_t* hi) {
  if (size > (int64_t(1) << 20)) {  // the T-precision of the bin edges is coarse: test them all
    *lo = 0;
    *hi = pooled - 1;
    return;
  }
  const double bin = static_cast<double>(size) / static_cast<double>(pooled);
  const double d = static_cast<double>(v - start);
  const double a = floor(d / bin - 1.0) - 1.0, b = ceil((d + 1.0) / bin) + 1.0;
  *lo = a < 0.0 ? 0 : (a > static_cast<double>(pooled) ? pooled : static_cast<int64_t>(a));
  *hi = b > static_cast<double>(pooled - 1) ? pooled - 1 : (b < -1.0 ? -1 : static_cast<int64_t>(b));
}

// Deterministic backward: one thread per grad_input element (w fastest).
template <typename acc_t, typename scalar_t>
__global__ void roi_pool_backward_gather_kernel(const acc_t* __restrict__ grad, const int32_t* __restrict__ argmax,
                                                const PoolGeom* __restrict__ geom,
                                                const int64_t* __restrict__ roi_order,
                                                const int64_t* __restrict__ offsets, int64_t N, int64_t C, int64_t H,
                                                int64_t W, int64_t PH, int64_t PW, scalar_t* __restrict__ gi) {
  const int64_t total = N * C * H * W;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t t = idx;
    const int64_t w = t % W; t /= W;
    const int64_t h = t % H; t /= H;
    const int64_t c = t % C;
    const int64_t n = t / C;
    const int64_t pos = h * W + w;
    acc_t s = 0;
    for (int64_t r = offsets[n]; r < offsets[n + 1]; ++r) {
      const int64_t k = roi_order[r];
      const RoIPoolBox b = geom[k].box;
      if (!b.valid) continue;
      int64_t ph0, ph1, pw0, pw1;
      bins_holding(h, b.start_h, b.height, PH, &ph0, &ph1);
      if (ph0 > ph1) continue;
      bins_holding(w, b.start_w, b.width, PW, &pw0, &pw1);
      const int64_t base = (k * C + c) * PH * PW;
      for (int64_t ph = ph0; ph <= ph1; ++ph) {
        int64_t hs, he;
        roi_pool_bin<acc_t>(ph, PH, b.start_h, b.height, H, &hs, &he);
        if (h < hs || h >= he) continue;
        for (int64_t pw = pw0; pw <= pw1; ++pw) {
          const int64_t j = base + ph * PW + pw;
          if (argmax[j] == pos) s += grad[j];
        }
      }
    }
    gi[idx] = static_cast<scalar_t>(s);
  }
}

std::tuple<at::Tensor, at::Tensor> roi_pool_cuda(const at::Tensor& input, const at::Tensor& boxes,
                                                 double spatial_scale, int64_t pooled_height, int64_t pooled_width) {
  check_roi_pool_forward_args(input, boxes, spatial_scale, pooled_height, pooled_width);
  const c10::cuda::CUDAGuard guard(input.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t K = boxes.size(0), N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  at::Tensor out = at::empty({K, C, pooled_height, pooled_width}, input.options());
  at::Tensor argmax = at::empty({K, C, pooled_height, pooled_width}, input.options().dtype(at::kInt));
  if (out.numel() == 0) return {out, argmax};
  const auto acc_type = accumulate_type_of(input.scalar_type());
  const at::Tensor rois = boxes.to(acc_type).contiguous();
  const bool channels_fastest = input.stride(1) == 1 && C > 1;
  at::Tensor geom = at::empty({K * static_cast<int64_t>(sizeof(PoolGeom))}, input.options().dtype(at::kByte));
  auto* geom_p = reinterpret_cast<PoolGeom*>(geom.data_ptr<uint8_t>());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_pool_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    pool_geometry_kernel<acc_t><<<blocks_for(K, kThreads), kThreads, 0, stream>>>(rois.data_ptr<acc_t>(), K, N,
                                                                                  spatial_scale, geom_p, nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const unsigned int grid = blocks_for(out.numel(), kThreads);
    if (channels_fastest) {
      roi_pool_forward_kernel<scalar_t, acc_t, true><<<grid, kThreads, 0, stream>>>(
          input.data_ptr<scalar_t>(), input.stride(0), input.stride(1), input.stride(2), input.stride(3), C, H, W,
          geom_p, K, pooled_height, pooled_width, out.data_ptr<scalar_t>(), argmax.data_ptr<int32_t>());
    } else {
      roi_pool_forward_kernel<scalar_t, acc_t, false><<<grid, kThreads, 0, stream>>>(
          input.data_ptr<scalar_t>(), input.stride(0), input.stride(1), input.stride(2), input.stride(3), C, H, W,
          geom_p, K, pooled_height, pooled_width, out.data_ptr<scalar_t>(), argmax.data_ptr<int32_t>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, argmax};
}

at::Tensor roi_pool_backward_cuda(const at::Tensor& grad, const at::Tensor& boxes, const at::Tensor& argmax,
                                  double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                                  int64_t batch_size, int64_t channels, int64_t height, int64_t width) {
  check_roi_pool_backward_args(grad, boxes, argmax, spatial_scale, pooled_height, pooled_width, batch_size, channels,
                               height, width);
  TORCH_CHECK_TYPE(boxes.scalar_type() == grad.scalar_type(), "boxes must have the dtype of grad (",
                   grad.scalar_type(), "), got ", boxes.scalar_type());
  const c10::cuda::CUDAGuard guard(grad.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t K = boxes.size(0), N = batch_size, C = channels, H = height, W = width;
  const int64_t PH = pooled_height, PW = pooled_width;
  const auto acc_type = accumulate_type_of(grad.scalar_type());
  if (N * C * H * W == 0) return at::empty({N, C, H, W}, grad.options());
  if (K == 0) return at::zeros({N, C, H, W}, grad.options());
  const at::Tensor rois = boxes.to(acc_type).contiguous();
  const at::Tensor g = grad.to(acc_type).contiguous();
  const at::Tensor am = argmax.contiguous();
  at::Tensor geom = at::empty({K * static_cast<int64_t>(sizeof(PoolGeom))}, grad.options().dtype(at::kByte));
  auto* geom_p = reinterpret_cast<PoolGeom*>(geom.data_ptr<uint8_t>());
  at::Tensor batch_key = at::empty({K}, grad.options().dtype(at::kLong));
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  at::Tensor gi;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_pool_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    pool_geometry_kernel<acc_t><<<blocks_for(K, kThreads), kThreads, 0, stream>>>(
        rois.data_ptr<acc_t>(), K, N, spatial_scale, geom_p, batch_key.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (!deterministic) {
      at::Tensor acc = at::zeros({N, C, H, W}, grad.options().dtype(acc_type));
      roi_pool_backward_atomic_kernel<acc_t><<<blocks_for(g.numel(), kThreads), kThreads, 0, stream>>>(
          g.data_ptr<acc_t>(), am.data_ptr<int32_t>(), geom_p, K, C, H * W, PH * PW, acc.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      gi = acc.scalar_type() == grad.scalar_type() ? acc : acc.to(grad.scalar_type());
      return;
    }
    const auto sorted = at::sort(batch_key, /*stable=*/true, /*dim=*/0, /*descending=*/false);
    const at::Tensor roi_order = std::get<1>(sorted).contiguous();
    const at::Tensor offsets =
        at::searchsorted(std::get<0>(sorted).contiguous(), at::arange(N + 1, batch_key.options())).contiguous();
    gi = at::empty({N, C, H, W}, grad.options());
    roi_pool_backward_gather_kernel<acc_t, scalar_t><<<blocks_for(gi.numel(), kThreads), kThreads, 0, stream>>>(
        g.data_ptr<acc_t>(), am.data_ptr<int32_t>(), geom_p, roi_order.data_ptr<int64_t>(),
        offsets.data_ptr<int64_t>(), N, C, H, W, PH, PW, gi.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return gi;
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CUDA, m) {
  m.impl("roi_pool", &pydetops::roi_pool_cuda);
  m.impl("_roi_pool_backward", &pydetops::roi_pool_backward_cuda);
}
