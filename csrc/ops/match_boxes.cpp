// Schema of match_boxes: torchvision's Matcher (anchor/proposal to ground-truth
// assignment by IoU) without the M x N IoU matrix. Per anchor: the index of the
// best ground truth (or -1 below low_threshold, -2 between the thresholds) and
// that best IoU. Not differentiable.
#include "ops/match_boxes.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "common/checks.h"

namespace pydetops {

void check_match_boxes_args(const at::Tensor& anchors, const at::Tensor& gt_boxes, double high_threshold,
                            double low_threshold) {
  check_box_tensor(anchors, "anchors");
  check_box_tensor(gt_boxes, "gt_boxes");
  check_real(anchors, "anchors");
  check_real(gt_boxes, "gt_boxes");
  check_same_device(anchors, "anchors", gt_boxes, "gt_boxes");
  TORCH_CHECK_VALUE(!std::isnan(high_threshold), "high_threshold must not be NaN");
  TORCH_CHECK_VALUE(!std::isnan(low_threshold), "low_threshold must not be NaN");
  TORCH_CHECK_VALUE(low_threshold <= high_threshold, "low_threshold must be <= high_threshold, got low_threshold=",
                    low_threshold, " and high_threshold=", high_threshold);
  TORCH_CHECK_VALUE(anchors.size(0) < (int64_t(1) << 31), "anchors must have fewer than 2^31 rows, got ",
                    anchors.size(0));
  TORCH_CHECK_VALUE(gt_boxes.size(0) < (int64_t(1) << 31), "gt_boxes must have fewer than 2^31 rows, got ",
                    gt_boxes.size(0));
}

std::tuple<at::Tensor, at::Tensor> match_boxes(const at::Tensor& anchors, const at::Tensor& gt_boxes,
                                               double high_threshold, double low_threshold,
                                               bool allow_low_quality_matches) {
  static auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("pydetops::match_boxes", "").typed<decltype(match_boxes)>();
  return op.call(anchors, gt_boxes, high_threshold, low_threshold, allow_low_quality_matches);
}

}  // namespace pydetops

TORCH_LIBRARY_FRAGMENT(pydetops, m) {
  m.set_python_module("pydetops.ops.detection");  // where the fake kernels are registered
  m.def(
      "match_boxes(Tensor anchors, Tensor gt_boxes, float high_threshold, float low_threshold, "
      "bool allow_low_quality_matches=False) -> (Tensor, Tensor)");
}
