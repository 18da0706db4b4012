// The comparisons of match_boxes (torchvision's Matcher), written once for the
// CPU and CUDA kernels.
//
//  * IoU of ground truth g and anchor a: box_iou(gt_boxes, anchors)[g, a], i.e.
//    box_overlap_terms<IoU, matrix form> with the ground truth first (the same
//    operations and rounding as torchvision's box_iou).
//  * Per anchor, the best ground truth is torch.max(dim=0)'s: the largest IoU,
//    the lowest index among equal values, and a NaN IoU beats everything (the
//    first NaN wins), so its value is NaN and it is "matched" (NaN compares false
//    with both thresholds), exactly as torchvision's Matcher.
//  * Per ground truth, the best IoU is torch.max(dim=1)'s value: NaN if any IoU
//    of that ground truth is NaN (then no anchor equals it).
//  * Thresholds are compared in the IoU's type, as torch compares a float
//    tensor with a Python float.
#pragma once
#include "common/box_overlap_math.h"
#include "common/macros.h"

namespace pydetops {
namespace matching {

template <typename T>
PYDETOPS_HOST_DEVICE inline bool is_nan(T v) {
  return v != v;
}

// True when value v (at a higher index than the current best) replaces the best.
template <typename T>
PYDETOPS_HOST_DEVICE inline bool replaces_best(T v, T best) {
  if (is_nan(best)) return false;
  return is_nan(v) || v > best;
}

// NaN-propagating max (torch.max's value).
template <typename T>
PYDETOPS_HOST_DEVICE inline T max_nan_propagating(T a, T b) {
  if (is_nan(a)) return a;
  if (is_nan(b)) return b;
  return b > a ? b : a;
}

template <typename T>
PYDETOPS_HOST_DEVICE inline T iou(const BoxTerms<T>& gt, const BoxTerms<T>& anchor) {
  return box_overlap_terms<OverlapMode::IoU, false, T>(gt, anchor, T(0));
}

// Matcher's code for an anchor whose best IoU is v and best index idx.
template <typename T>
PYDETOPS_HOST_DEVICE inline long long threshold_match(T v, long long idx, T low, T high) {
  if (v < low) return -1;
  if (v < high) return -2;  // low <= v < high
  return idx;
}

}  // namespace matching
}  // namespace pydetops
