// CUDA kernels of match_boxes, with the comparisons of common/match_math.h.
// No M x N matrix and no host synchronisation:
//  1. (allow_low_quality_matches only) gt_best_kernel: one block per ground
//     truth takes the NaN-propagating max of its IoU over all anchors (a
//     shared-memory tree; max is exact, so the result does not depend on the
//     order).
//  2. match_kernel: one thread per anchor streams the ground truths, keeps
//     torch.max(dim=0)'s best (first index among ties, first NaN wins), applies
//     the thresholds and, with low-quality matches, keeps its raw best index
//     when its IoU with some ground truth equals that ground truth's best.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "common/checks.h"
#include "common/match_math.h"
#include "ops/match_boxes.h"

namespace pydetops {
namespace {

constexpr int kThreads = 256;

inline unsigned int blocks_for(int64_t n, int threads) {
  return static_cast<unsigned int>(std::min<int64_t>(std::max<int64_t>(1, (n + threads - 1) / threads), 1 << 20));
}

template <typename T>
__device__ inline BoxTerms<T> load_terms(const T* p, int64_t i) {
  return box_terms<OverlapMode::IoU, T>(p[4 * i], p[4 * i + 1], p[4 * i + 2], p[4 * i + 3]);
}

template <typename T>
__global__ void gt_best_kernel(const T* __restrict__ anchors, int64_t n, const T* __restrict__ gt,
                               T* __restrict__ gt_best) {
  __shared__ T partial[kThreads];
  const int64_t j = blockIdx.x;
  const BoxTerms<T> g = load_terms(gt, j);
  T best = -INFINITY;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    best = matching::max_nan_propagating(best, matching::iou(g, load_terms(anchors, i)));
  }
  partial[threadIdx.x] = best;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) partial[threadIdx.x] = matching::max_nan_propagating(partial[threadIdx.x], partial[threadIdx.x + s]);
    __syncthreads();
  }
  if (threadIdx.x == 0) gt_best[j] = partial[0];
}

template <typename T>
__global__ void match_kernel(const T* __restrict__ anchors, int64_t n, const T* __restrict__ gt, int64_t m,
                             const T* __restrict__ gt_best, T low, T high, int64_t* __restrict__ matches,
                             T* __restrict__ values) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const BoxTerms<T> an = load_terms(anchors, i);
    T best = matching::iou(load_terms(gt, 0), an);
    int64_t best_j = 0;
    for (int64_t j = 1; j < m; ++j) {
      const T v = matching::iou(load_terms(gt, j), an);
      if (matching::replaces_best(v, best)) {
        best = v;
        best_j = j;
      }
    }
    bool keep_raw = false;
    if (gt_best != nullptr) {
      for (int64_t j = 0; j < m && !keep_raw; ++j) {
        const T gb = gt_best[j];
        if (!matching::is_nan(gb) && matching::iou(load_terms(gt, j), an) == gb) keep_raw = true;
      }
    }
    values[i] = best;
    matches[i] = keep_raw ? best_j : static_cast<int64_t>(matching::threshold_match(best, best_j, low, high));
  }
}

std::tuple<at::Tensor, at::Tensor> match_boxes_cuda(const at::Tensor& anchors, const at::Tensor& gt_boxes,
                                                    double high_threshold, double low_threshold,
                                                    bool allow_low_quality_matches) {
  check_match_boxes_args(anchors, gt_boxes, high_threshold, low_threshold);
  const c10::cuda::CUDAGuard guard(anchors.device());
  const auto acc_type =
      (anchors.scalar_type() == at::kDouble || gt_boxes.scalar_type() == at::kDouble) ? at::kDouble : at::kFloat;
  const int64_t n = anchors.size(0), m = gt_boxes.size(0);
  at::Tensor matches = at::empty({n}, anchors.options().dtype(at::kLong));
  at::Tensor values = at::empty({n}, anchors.options().dtype(acc_type));
  if (n == 0) return {matches, values};
  if (m == 0) {
    matches.fill_(kBelowLowThreshold);
    values.zero_();
    return {matches, values};
  }
  const at::Tensor a = anchors.to(acc_type).contiguous();
  const at::Tensor g = gt_boxes.to(acc_type).contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(acc_type, "match_boxes_cuda", [&] {
    using T = scalar_t;
    at::Tensor gt_best;
    if (allow_low_quality_matches) {
      gt_best = at::empty({m}, values.options());
      gt_best_kernel<T><<<static_cast<unsigned int>(m), kThreads, 0, stream>>>(a.data_ptr<T>(), n, g.data_ptr<T>(),
                                                                                gt_best.data_ptr<T>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    match_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, stream>>>(
        a.data_ptr<T>(), n, g.data_ptr<T>(), m, allow_low_quality_matches ? gt_best.data_ptr<T>() : nullptr,
        static_cast<T>(low_threshold), static_cast<T>(high_threshold), matches.data_ptr<int64_t>(),
        values.data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {matches, values};
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CUDA, m) {
  m.impl("match_boxes", &pydetops::match_boxes_cuda);
}
