// The pairwise tests of the NMS family (nms, batched_nms, soft_nms), written
// once for the CPU and CUDA kernels.
//
//  * IoU is inter / (area_a + area_b - inter) with precomputed areas: the same
//    formula, and the same rounding, as box_overlap<OverlapMode::IoU, false, T>
//    in box_overlap_math.h and as torchvision's nms kernels.
//  * A box is suppressed when IoU > threshold (strictly). The threshold arrives
//    as a double; threshold_for<T>() rounds it DOWN to T so that the comparison
//    done in T is exactly "(double) iou > threshold", as in torchvision, where a
//    float IoU is compared with the double threshold.
//  * Pairs whose intersection is empty have IoU 0 (or NaN when the union is 0
//    or not finite): they never suppress and are never decayed, because the
//    threshold is >= 0 and NaN compares false. This is what lets a kernel skip
//    ("cull") pairs that cannot intersect, and skip boxes with a non-finite
//    coordinate altogether (their IoU with anything is 0 or NaN).
#pragma once
#include <cmath>
#include <limits>

#include "common/box_overlap_math.h"
#include "common/macros.h"

namespace pydetops {

enum class SoftNmsMethod : int { Linear = 0, Gaussian = 1, Hard = 2 };

template <typename T>
PYDETOPS_HOST_DEVICE inline T box_area_xyxy(T x1, T y1, T x2, T y2) {
  return (x2 - x1) * (y2 - y1);
}

// IoU of a and b given their areas (box_area_xyxy).
template <typename T>
PYDETOPS_HOST_DEVICE inline T iou_with_areas(T ax1, T ay1, T ax2, T ay2, T area_a, T bx1, T by1, T bx2, T by2,
                                             T area_b) {
  const T iw = max_of(min_of(ax2, bx2) - max_of(ax1, bx1), T(0));
  const T ih = max_of(min_of(ay2, by2) - max_of(ay1, by1), T(0));
  const T inter = iw * ih;
  return inter / (area_a + area_b - inter);
}

// The largest T that is <= threshold: for any T value v, v > threshold_for<T>(t)
// exactly when (double) v > t.
template <typename T>
PYDETOPS_HOST_DEVICE inline T threshold_for(double threshold) {
  T t = static_cast<T>(threshold);
  if (static_cast<double>(t) > threshold) t = std::nextafter(t, -std::numeric_limits<T>::infinity());
  return t;
}

// The factor by which Soft-NMS multiplies the score of a box whose IoU with
// the box just selected is `iou`; 0 for method Hard means "remove the box".
// Gaussian decays every overlapping box (Bodla et al. 2017, eq. 3): no threshold.
// A NaN IoU gives 1 (no decay).
template <typename T>
PYDETOPS_HOST_DEVICE inline T soft_nms_weight(SoftNmsMethod method, T iou, T iou_threshold, T sigma) {
  if (!(iou > T(0))) return T(1);
  switch (method) {
    case SoftNmsMethod::Linear: return iou > iou_threshold ? T(1) - iou : T(1);
    // exp in double, then rounded to T: the same (correctly rounded) value from
    // glibc and from CUDA's exp, where float expf may differ by an ulp or two.
    case SoftNmsMethod::Gaussian: return static_cast<T>(::exp(static_cast<double>(-(iou * iou) / sigma)));
    case SoftNmsMethod::Hard: return iou > iou_threshold ? T(0) : T(1);
  }
  return T(1);
}

}  // namespace pydetops
