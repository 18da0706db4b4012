// CPU kernel of match_boxes. The anchors are split into fixed blocks of
// kBlock anchors (independent of the thread count); for each anchor the ground
// truths are streamed (their BoxTerms precomputed once), so memory is O(N + M *
// blocks), never the M x N IoU matrix. Each block also records, per ground
// truth, its largest IoU; the per-ground-truth best IoU is the max over blocks
// (max is exact and order-free, so the result is the same for any thread
// count). For allow_low_quality_matches only the blocks whose maximum for a
// ground truth equals that ground truth's best are scanned again.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <limits>
#include <vector>

#include "common/checks.h"
#include "common/match_math.h"
#include "ops/match_boxes.h"

namespace pydetops {
namespace {

constexpr int64_t kBlock = 512;

template <typename T>
std::vector<BoxTerms<T>> terms_of(const at::Tensor& boxes) {
  const T* p = boxes.data_ptr<T>();
  const int64_t n = boxes.size(0);
  std::vector<BoxTerms<T>> t(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    t[i] = box_terms<OverlapMode::IoU, T>(p[4 * i], p[4 * i + 1], p[4 * i + 2], p[4 * i + 3]);
  }
  return t;
}

std::tuple<at::Tensor, at::Tensor> match_boxes_cpu(const at::Tensor& anchors, const at::Tensor& gt_boxes,
                                                   double high_threshold, double low_threshold,
                                                   bool allow_low_quality_matches) {
  check_match_boxes_args(anchors, gt_boxes, high_threshold, low_threshold);
  const auto acc_type =
      (anchors.scalar_type() == at::kDouble || gt_boxes.scalar_type() == at::kDouble) ? at::kDouble : at::kFloat;
  const int64_t n = anchors.size(0), m = gt_boxes.size(0);
  at::Tensor matches = at::empty({n}, anchors.options().dtype(at::kLong));
  at::Tensor values = at::empty({n}, anchors.options().dtype(acc_type));
  if (n == 0) return {matches, values};
  if (m == 0) {
    // No ground truth: every anchor is background (what torchvision's detectors do).
    matches.fill_(kBelowLowThreshold);
    values.zero_();
    return {matches, values};
  }
  const at::Tensor a = anchors.to(acc_type).contiguous();
  const at::Tensor g = gt_boxes.to(acc_type).contiguous();
  const int64_t nblocks = (n + kBlock - 1) / kBlock;
  AT_DISPATCH_FLOATING_TYPES(acc_type, "match_boxes_cpu", [&] {
    using T = scalar_t;
    const std::vector<BoxTerms<T>> gt = terms_of<T>(g);
    const T* ap = a.data_ptr<T>();
    int64_t* mp = matches.data_ptr<int64_t>();
    T* vp = values.data_ptr<T>();
    const T low = static_cast<T>(low_threshold), high = static_cast<T>(high_threshold);
    // block_best[b * m + j]: the largest IoU of ground truth j over block b's anchors.
    std::vector<T> block_best(allow_low_quality_matches ? static_cast<size_t>(nblocks * m) : 0);
    at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        T* bb = allow_low_quality_matches ? block_best.data() + b * m : nullptr;
        if (bb) {
          for (int64_t j = 0; j < m; ++j) bb[j] = -std::numeric_limits<T>::infinity();
        }
        const int64_t end = std::min(n, (b + 1) * kBlock);
        for (int64_t i = b * kBlock; i < end; ++i) {
          const BoxTerms<T> an = box_terms<OverlapMode::IoU, T>(ap[4 * i], ap[4 * i + 1], ap[4 * i + 2], ap[4 * i + 3]);
          T best = matching::iou(gt[0], an);
          int64_t best_j = 0;
          if (bb) bb[0] = matching::max_nan_propagating(bb[0], best);
          for (int64_t j = 1; j < m; ++j) {
            const T v = matching::iou(gt[j], an);
            if (matching::replaces_best(v, best)) {
              best = v;
              best_j = j;
            }
            if (bb) bb[j] = matching::max_nan_propagating(bb[j], v);
          }
          vp[i] = best;
          // Before the low-quality pass, matches holds the raw argmax (torchvision's all_matches).
          mp[i] = best_j;
        }
      }
    });
    if (!allow_low_quality_matches) {
      at::parallel_for(0, n, 4096, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) mp[i] = matching::threshold_match(vp[i], mp[i], low, high);
      });
      return;
    }
    std::vector<T> gt_best(static_cast<size_t>(m), -std::numeric_limits<T>::infinity());
    for (int64_t b = 0; b < nblocks; ++b) {
      for (int64_t j = 0; j < m; ++j) gt_best[j] = matching::max_nan_propagating(gt_best[j], block_best[b * m + j]);
    }
    at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
      std::vector<char> keep_raw(static_cast<size_t>(kBlock));
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t start = b * kBlock, end = std::min(n, (b + 1) * kBlock);
        std::fill(keep_raw.begin(), keep_raw.end(), 0);
        for (int64_t j = 0; j < m; ++j) {
          // A ground truth whose best IoU is NaN equals no anchor; a block whose
          // maximum is below the best holds no anchor tied at it.
          if (matching::is_nan(gt_best[j]) || !(block_best[b * m + j] == gt_best[j])) continue;
          for (int64_t i = start; i < end; ++i) {
            if (keep_raw[i - start]) continue;
            const BoxTerms<T> an =
                box_terms<OverlapMode::IoU, T>(ap[4 * i], ap[4 * i + 1], ap[4 * i + 2], ap[4 * i + 3]);
            if (matching::iou(gt[j], an) == gt_best[j]) keep_raw[i - start] = 1;
          }
        }
        for (int64_t i = start; i < end; ++i) {
          // Anchors that are the best of some ground truth keep their own best
          // match (torchvision's all_matches), whatever their IoU.
          if (!keep_raw[i - start]) mp[i] = matching::threshold_match(vp[i], mp[i], low, high);
        }
      }
    });
  });
  return {matches, values};
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CPU, m) {
  m.impl("match_boxes", &pydetops::match_boxes_cpu);
}
