// Schema of encode_boxes: R-CNN regression targets of reference (ground-truth)
// boxes relative to proposals, scaled by weights (wx, wy, ww, wh), as
// torchvision.models.detection._utils.encode_boxes. Differentiable w.r.t. both
// box sets (_encode_boxes_backward); the weights are treated as constants.
#include "ops/encode_boxes.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "common/checks.h"

namespace pydetops {

void check_encode_boxes_args(const at::Tensor& reference_boxes, const at::Tensor& proposals,
                             const at::Tensor& weights) {
  check_box_tensor(reference_boxes, "reference_boxes");
  check_box_tensor(proposals, "proposals");
  check_real(reference_boxes, "reference_boxes");
  check_real(proposals, "proposals");
  check_same_device(reference_boxes, "reference_boxes", proposals, "proposals");
  TORCH_CHECK_VALUE(reference_boxes.size(0) == proposals.size(0),
                    "reference_boxes and proposals must have as many boxes, got ", reference_boxes.size(0), " and ",
                    proposals.size(0));
  TORCH_CHECK_VALUE(weights.numel() == 4, "weights must hold 4 values (wx, wy, ww, wh), got shape ",
                    weights.sizes());
  check_real(weights, "weights");
}

at::ScalarType encode_boxes_result_type(const at::Tensor& reference_boxes, const at::Tensor& proposals) {
  const auto t = at::promote_types(reference_boxes.scalar_type(), proposals.scalar_type());
  return at::isFloatingType(t) ? t : at::kFloat;
}

std::array<double, 4> encode_weights_values(const at::Tensor& weights) {
  const at::Tensor w = weights.detach().reshape({4}).to(at::kCPU, at::kDouble).contiguous();
  const double* p = w.data_ptr<double>();
  return {p[0], p[1], p[2], p[3]};
}

at::Tensor encode_boxes(const at::Tensor& reference_boxes, const at::Tensor& proposals, const at::Tensor& weights) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pydetops::encode_boxes", "")
                       .typed<decltype(encode_boxes)>();
  return op.call(reference_boxes, proposals, weights);
}

std::tuple<at::Tensor, at::Tensor> encode_boxes_backward(const at::Tensor& grad, const at::Tensor& reference_boxes,
                                                         const at::Tensor& proposals, const at::Tensor& weights) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pydetops::_encode_boxes_backward", "")
                       .typed<decltype(encode_boxes_backward)>();
  return op.call(grad, reference_boxes, proposals, weights);
}

}  // namespace pydetops

TORCH_LIBRARY_FRAGMENT(pydetops, m) {
  m.set_python_module("pydetops.ops.anchors_coding");  // where the fake kernels are registered
  m.def("encode_boxes(Tensor reference_boxes, Tensor proposals, Tensor weights) -> Tensor");
  m.def(
      "_encode_boxes_backward(Tensor grad, Tensor reference_boxes, Tensor proposals, Tensor weights) "
      "-> (Tensor, Tensor)");
}
