// Schemas of the NMS family: nms, batched_nms, soft_nms. Their outputs have a
// data-dependent length (the fake kernels in pydetops/ops/nms.py use an
// unbacked size) and are not differentiable.
#include "ops/nms.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "common/checks.h"

namespace pydetops {

namespace {

void check_iou_threshold(double iou_threshold) {
  TORCH_CHECK_VALUE(!std::isnan(iou_threshold) && iou_threshold >= 0, "iou_threshold must be a number >= 0, got ",
                    iou_threshold);
}

void check_boxes_and_scores(const at::Tensor& boxes, const at::Tensor& scores) {
  check_box_tensor(boxes, "boxes");
  TORCH_CHECK_TYPE(at::isFloatingType(boxes.scalar_type()),
                   "boxes must be a floating-point tensor (float16, bfloat16, float32, float64), got ",
                   boxes.scalar_type());
  TORCH_CHECK_VALUE(scores.dim() == 1, "scores must be a Tensor[N], got shape ", scores.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(scores.scalar_type()),
                   "scores must be a floating-point tensor (float16, bfloat16, float32, float64), got ",
                   scores.scalar_type());
  TORCH_CHECK_VALUE(boxes.size(0) == scores.size(0), "boxes and scores must have the same length N, got boxes ",
                    boxes.sizes(), " and scores ", scores.sizes());
  check_same_device(boxes, "boxes", scores, "scores");
  TORCH_CHECK_VALUE(boxes.size(0) < (int64_t(1) << 31), "boxes must have fewer than 2^31 rows, got ", boxes.size(0));
}

}  // namespace

void check_nms_args(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_boxes_and_scores(boxes, scores);
  check_iou_threshold(iou_threshold);
}

void check_batched_nms_args(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                            double iou_threshold) {
  check_boxes_and_scores(boxes, scores);
  TORCH_CHECK_VALUE(idxs.dim() == 1, "idxs must be a Tensor[N], got shape ", idxs.sizes());
  TORCH_CHECK_TYPE(at::isIntegralType(idxs.scalar_type(), /*includeBool=*/false),
                   "idxs must be an integer tensor (the class of each box), got ", idxs.scalar_type());
  TORCH_CHECK_VALUE(idxs.size(0) == boxes.size(0), "idxs must have one entry per box, got idxs ", idxs.sizes(),
                    " and boxes ", boxes.sizes());
  check_same_device(boxes, "boxes", idxs, "idxs");
  check_iou_threshold(iou_threshold);
}

SoftNmsMethod parse_soft_nms_method(c10::string_view method) {
  if (method == "gaussian") return SoftNmsMethod::Gaussian;
  if (method == "linear") return SoftNmsMethod::Linear;
  if (method == "hard") return SoftNmsMethod::Hard;
  TORCH_CHECK_VALUE(false, "method must be one of 'gaussian', 'linear', 'hard', got '", method, "'");
}

void check_soft_nms_args(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold, double sigma,
                         double score_threshold, c10::string_view method) {
  check_boxes_and_scores(boxes, scores);
  check_iou_threshold(iou_threshold);
  TORCH_CHECK_VALUE(std::isfinite(sigma) && sigma > 0, "sigma must be a finite number > 0, got ", sigma);
  TORCH_CHECK_VALUE(!std::isnan(score_threshold), "score_threshold must not be NaN");
  parse_soft_nms_method(method);
}

at::Tensor nms(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("pydetops::nms", "").typed<decltype(nms)>();
  return op.call(boxes, scores, iou_threshold);
}

at::Tensor batched_nms(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                       double iou_threshold) {
  static auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("pydetops::batched_nms", "").typed<decltype(batched_nms)>();
  return op.call(boxes, scores, idxs, iou_threshold);
}

std::tuple<at::Tensor, at::Tensor> soft_nms(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold,
                                            double sigma, double score_threshold, c10::string_view method) {
  static auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("pydetops::soft_nms", "").typed<decltype(soft_nms)>();
  return op.call(boxes, scores, iou_threshold, sigma, score_threshold, method);
}

}  // namespace pydetops

TORCH_LIBRARY_FRAGMENT(pydetops, m) {
  m.set_python_module("pydetops.ops.nms");  // where the fake kernels are registered
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
  m.def(
      "soft_nms(Tensor boxes, Tensor scores, float iou_threshold=0.3, float sigma=0.5, float score_threshold=0.001, "
      "str method=\"gaussian\") -> (Tensor, Tensor)");
}
