// CPU kernel of match_boxes. The anchors are split into fixed blocks of
// kBlock anchors (independent of the thread count); for each anchor the ground
// truths are streamed (their BoxTerms precomputed once), so memory is O(N + M *
// blocks), never the M x N IoU matrix; within a block the loop over anchors
// for one ground truth is branch-free (structure-of-arrays) and vectorises.
// Each block also records, per ground
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
      // The block's anchors as structure-of-arrays, so that the loop over a
      // block for one ground truth vectorises (compare/select, no branches).
      std::vector<T> x1(kBlock), y1(kBlock), x2(kBlock), y2(kBlock), area(kBlock), best(kBlock), iou(kBlock);
      std::vector<int32_t> best_j(kBlock);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t start = b * kBlock, len = std::min(n, start + kBlock) - start;
        for (int64_t i = 0; i < len; ++i) {
          const BoxTerms<T> an = box_terms<OverlapMode::IoU, T>(ap[4 * (start + i)], ap[4 * (start + i) + 1],
                                                                ap[4 * (start + i) + 2], ap[4 * (start + i) + 3]);
          x1[i] = an.x1;
          y1[i] = an.y1;
          x2[i] = an.x2;
          y2[i] = an.y2;
          area[i] = an.area;
          best[i] = -std::numeric_limits<T>::infinity();
          best_j[i] = 0;
        }
        T* bb = allow_low_quality_matches ? block_best.data() + b * m : nullptr;
        for (int64_t j = 0; j < m; ++j) {
          const BoxTerms<T> gj = gt[j];
          const int32_t jj = static_cast<int32_t>(j);
          T* __restrict__ iou_p = iou.data();
          T* __restrict__ best_p = best.data();
          int32_t* __restrict__ idx_p = best_j.data();
          const T* __restrict__ px1 = x1.data();
          const T* __restrict__ py1 = y1.data();
          const T* __restrict__ px2 = x2.data();
          const T* __restrict__ py2 = y2.data();
          const T* __restrict__ parea = area.data();
          for (int64_t i = 0; i < len; ++i) {
            // box_overlap_terms<IoU, matrix form>(gt, anchor), operation for operation.
            const T iw = min_of(gj.x2, px2[i]) - max_of(gj.x1, px1[i]);
            const T ih = min_of(gj.y2, py2[i]) - max_of(gj.y1, py1[i]);
            const T inter = max_of(iw, T(0)) * max_of(ih, T(0));
            const T v = inter / (gj.area + parea[i] - inter);
            iou_p[i] = v;
            // matching::replaces_best, branch-free (the -inf start takes the first value).
            const T cur = best_p[i];
            const bool r = (cur == cur) && ((v != v) || v > cur);
            best_p[i] = r ? v : cur;
            idx_p[i] = r ? jj : idx_p[i];
          }
          if (bb) {
            // NaN-propagating max in 8 independent lanes (vectorises); the lanes'
            // max is the same value in any order (NaN if any, else the exact max).
            T lane[8];
            for (int l = 0; l < 8; ++l) lane[l] = -std::numeric_limits<T>::infinity();
            int64_t i = 0;
            for (; i + 8 <= len; i += 8) {
              for (int l = 0; l < 8; ++l) {
                const T v = iou_p[i + l], c = lane[l];
                lane[l] = (c != c) ? c : (((v != v) || v > c) ? v : c);
              }
            }
            T mx = -std::numeric_limits<T>::infinity();
            for (; i < len; ++i) mx = matching::max_nan_propagating(mx, iou_p[i]);
            for (int l = 0; l < 8; ++l) mx = matching::max_nan_propagating(mx, lane[l]);
            bb[j] = mx;
          }
        }
        for (int64_t i = 0; i < len; ++i) {
          vp[start + i] = best[i];
          // Before the low-quality pass, matches holds the raw argmax (torchvision's all_matches).
          mp[start + i] = best_j[i];
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
