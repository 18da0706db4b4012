// Schema of decode_boxes: R-CNN box regression decoding (torchvision's
// BoxCoder.decode_single) in one pass, for per-class codes Tensor[N, K*4],
// with the d_w/d_h clamp before exp and an optional clip to the image.
// Differentiable w.r.t. rel_codes and boxes (_decode_boxes_backward).
#include "ops/decode_boxes.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "common/checks.h"

namespace pydetops {

void check_decode_boxes_args(const at::Tensor& rel_codes, const at::Tensor& boxes, at::ArrayRef<double> weights,
                             double clamp, at::OptionalIntArrayRef image_size) {
  TORCH_CHECK_VALUE(rel_codes.dim() == 2 && rel_codes.size(1) % 4 == 0,
                    "rel_codes must be a Tensor[N, K*4] (4 codes per class), got shape ", rel_codes.sizes());
  check_floating(rel_codes, "rel_codes");
  check_box_tensor(boxes, "boxes");
  check_real(boxes, "boxes");
  check_same_device(rel_codes, "rel_codes", boxes, "boxes");
  TORCH_CHECK_VALUE(rel_codes.size(0) == boxes.size(0), "rel_codes and boxes must have as many rows, got ",
                    rel_codes.size(0), " and ", boxes.size(0));
  TORCH_CHECK_VALUE(weights.size() == 4, "weights must be 4 numbers (wx, wy, ww, wh), got ", weights.size());
  for (double v : weights) {
    TORCH_CHECK_VALUE(std::isfinite(v) && v != 0.0, "weights must be finite and non-zero, got ", weights);
  }
  TORCH_CHECK_VALUE(!std::isnan(clamp), "clamp must not be NaN");
  if (image_size.has_value()) {
    const auto s = *image_size;
    TORCH_CHECK_VALUE(s.size() == 2 && s[0] >= 0 && s[1] >= 0,
                      "image_size must be (height, width) with both >= 0, got ", s);
  }
}

at::Tensor decode_boxes(const at::Tensor& rel_codes, const at::Tensor& boxes, at::ArrayRef<double> weights,
                        double clamp, at::OptionalIntArrayRef image_size) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pydetops::decode_boxes", "")
                       .typed<decltype(decode_boxes)>();
  return op.call(rel_codes, boxes, weights, clamp, image_size);
}

std::tuple<at::Tensor, at::Tensor> decode_boxes_backward(const at::Tensor& grad, const at::Tensor& rel_codes,
                                                         const at::Tensor& boxes, at::ArrayRef<double> weights,
                                                         double clamp, at::OptionalIntArrayRef image_size) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pydetops::_decode_boxes_backward", "")
                       .typed<decltype(decode_boxes_backward)>();
  return op.call(grad, rel_codes, boxes, weights, clamp, image_size);
}

}  // namespace pydetops

TORCH_LIBRARY_FRAGMENT(pydetops, m) {
  m.set_python_module("pydetops.ops.anchors_coding");  // where the fake kernels are registered
  m.def(
      "decode_boxes(Tensor rel_codes, Tensor boxes, float[4] weights=[1.0, 1.0, 1.0, 1.0], "
      "float clamp=4.135166556742356, int[]? image_size=None) -> Tensor");
  m.def(
      "_decode_boxes_backward(Tensor grad, Tensor rel_codes, Tensor boxes, float[4] weights, float clamp, "
      "int[]? image_size) -> (Tensor, Tensor)");
}
