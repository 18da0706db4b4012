// CUDA kernel of heatmaps_to_keypoints: one block per (RoI, keypoint). The
// block's threads stride over the pixels of the RoI's resampled map, each
// computing its bicubic sample on the fly (16 taps of the heatmap, rounded to
// the heatmaps' dtype) and keeping its first maximum (NaN counts as the
// largest); a shared-memory reduction picks the block's maximum, ties going to
// the lower row-major index, as torch.argmax. No resized map is stored, no
// host synchronisation.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "common/checks.h"
#include "common/paste_keypoints_math.h"
#include "ops/paste_keypoints.h"

namespace pydetops {
namespace {

constexpr int kThreads = 256;

template <typename acc_t>
__device__ inline bool better(acc_t v, int64_t i, acc_t best, int64_t best_i) {
  if (best_i < 0) return i >= 0;
  if (i < 0) return false;
  const bool vn = isnan(v), bn = isnan(best);
  if (vn || bn) return vn && (!bn || i < best_i);
  return v > best || (v == best && i < best_i);
}

template <typename hm_t, typename roi_t, typename out_t>
__global__ void keypoints_kernel(const hm_t* __restrict__ hm, const roi_t* __restrict__ rois, int64_t K, int64_t SH,
                                 int64_t SW, int64_t s0, int64_t s1, int64_t s2, int64_t s3,
                                 out_t* __restrict__ xy, out_t* __restrict__ scores) {
  using acc_t = at::opmath_type<hm_t>;
  __shared__ acc_t s_val[kThreads];
  __shared__ int64_t s_idx[kThreads];
  const int64_t task = blockIdx.x;
  const int64_t r = task / K, k = task % K;
  const pk::RoiMap m = pk::roi_map_of<roi_t, at::opmath_type<roi_t>>(rois + 4 * r);
  if (!m.valid) {
    if (threadIdx.x == 0) {
      const out_t nan = std::numeric_limits<out_t>::quiet_NaN();
      xy[3 * task] = nan;
      xy[3 * task + 1] = nan;
      xy[3 * task + 2] = out_t(1);
      scores[task] = nan;
    }
    return;
  }
  const hm_t* X = hm + r * s0 + k * s1;
  const int64_t total = m.h * m.w;
  acc_t best = 0;
  int64_t best_i = -1;
  for (int64_t p = threadIdx.x; p < total; p += blockDim.x) {
    const int64_t y = p / m.w, x = p % m.w;
    int64_t iy[4], ix[4];
    acc_t wy[4], wx[4];
    pk::cubic_taps<acc_t>(y, SH, m.h, iy, wy);
    pk::cubic_taps<acc_t>(x, SW, m.w, ix, wx);
    acc_t v = 0;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const hm_t* row = X + iy[j] * s2;
      acc_t t = static_cast<acc_t>(row[ix[0] * s3]) * wx[0];
      t += static_cast<acc_t>(row[ix[1] * s3]) * wx[1];
      t += static_cast<acc_t>(row[ix[2] * s3]) * wx[2];
      t += static_cast<acc_t>(row[ix[3] * s3]) * wx[3];
      v = j == 0 ? t * wy[0] : v + t * wy[j];
    }
    v = static_cast<acc_t>(static_cast<hm_t>(v));
    if (better(v, p, best, best_i)) {
      best = v;
      best_i = p;
    }
  }
  s_val[threadIdx.x] = best;
  s_idx[threadIdx.x] = best_i;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) {
      const int o = threadIdx.x + stride;
      if (better(s_val[o], s_idx[o], s_val[threadIdx.x], s_idx[threadIdx.x])) {
        s_val[threadIdx.x] = s_val[o];
        s_idx[threadIdx.x] = s_idx[o];
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const int64_t bi = s_idx[0];  // total >= 1, so some thread found a pixel
    const int64_t xi = bi % m.w, yi = bi / m.w;
    xy[3 * task] = (static_cast<out_t>(xi) + out_t(0.5)) * static_cast<out_t>(m.corr_x) + static_cast<out_t>(m.off_x);
    xy[3 * task + 1] =
        (static_cast<out_t>(yi) + out_t(0.5)) * static_cast<out_t>(m.corr_y) + static_cast<out_t>(m.off_y);
    xy[3 * task + 2] = out_t(1);
    scores[task] = static_cast<out_t>(s_val[0]);
  }
}

std::tuple<at::Tensor, at::Tensor> heatmaps_to_keypoints_cuda(const at::Tensor& heatmaps, const at::Tensor& rois) {
  check_heatmaps_to_keypoints_args(heatmaps, rois);
  const c10::cuda::CUDAGuard guard(heatmaps.device());
  const int64_t R = heatmaps.size(0), K = heatmaps.size(1);
  const auto dt = keypoints_result_dtype(heatmaps, rois);
  at::Tensor xy = at::empty({R, K, 3}, heatmaps.options().dtype(dt));
  at::Tensor scores = at::empty({R, K}, heatmaps.options().dtype(dt));
  const int64_t tasks = R * K;
  if (tasks == 0) return {xy, scores};
  TORCH_CHECK_VALUE(tasks < (int64_t(1) << 31), "heatmaps must hold fewer than 2^31 maps (R * K), got ", tasks);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor rc = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, heatmaps.scalar_type(), "heatmaps_to_keypoints_cuda", [&] {
    using hm_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rc.scalar_type(), "heatmaps_to_keypoints_rois", [&] {
      using roi_t = scalar_t;
      AT_DISPATCH_FLOATING_TYPES(dt, "heatmaps_to_keypoints_out", [&] {
        keypoints_kernel<hm_t, roi_t, scalar_t><<<static_cast<unsigned int>(tasks), kThreads, 0, stream>>>(
            heatmaps.const_data_ptr<hm_t>(), rc.const_data_ptr<roi_t>(), K, heatmaps.size(2), heatmaps.size(3),
            heatmaps.stride(0), heatmaps.stride(1), heatmaps.stride(2), heatmaps.stride(3),
            xy.mutable_data_ptr<scalar_t>(), scores.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
  return {xy, scores};
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CUDA, m) {
  m.impl("heatmaps_to_keypoints", &pydetops::heatmaps_to_keypoints_cuda);
}
