// Schema of box_overlaps: the IoU family (IoU, IoF, GIoU, DIoU, CIoU) as an
// N x M matrix, or for N aligned pairs (boxes1[i] with boxes2[i]).
#include "ops/box_overlaps.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "common/checks.h"

namespace pydetops {

OverlapMode parse_overlap_mode(c10::string_view mode) {
  if (mode == "iou") return OverlapMode::IoU;
  if (mode == "iof") return OverlapMode::IoF;
  if (mode == "giou") return OverlapMode::GIoU;
  if (mode == "diou") return OverlapMode::DIoU;
  if (mode == "ciou") return OverlapMode::CIoU;
  TORCH_CHECK_VALUE(false, "mode must be one of 'iou', 'iof', 'giou', 'diou', 'ciou', got '", mode, "'");
}

void check_box_overlaps_args(const at::Tensor& boxes1, const at::Tensor& boxes2, bool aligned, double eps) {
  check_box_tensor(boxes1, "boxes1");
  check_box_tensor(boxes2, "boxes2");
  check_real(boxes1, "boxes1");
  check_real(boxes2, "boxes2");
  TORCH_CHECK_TYPE(boxes1.scalar_type() == boxes2.scalar_type(), "boxes1 and boxes2 must have the same dtype, got ",
                   boxes1.scalar_type(), " and ", boxes2.scalar_type());
  check_same_device(boxes1, "boxes1", boxes2, "boxes2");
  check_non_negative(eps, "eps");
  if (aligned) {
    TORCH_CHECK_VALUE(boxes1.size(0) == boxes2.size(0), "aligned=True needs as many boxes in boxes2 as in boxes1, got ",
                      boxes1.size(0), " and ", boxes2.size(0));
  } else {
    check_result_size(static_cast<double>(boxes1.size(0)) * static_cast<double>(boxes2.size(0)), 4,
                      "boxes1 and boxes2 (N x M result)");
  }
}

at::ScalarType box_overlaps_result_type(at::ScalarType boxes_type, bool aligned) {
  // torchvision: the matrices upcast float16/bfloat16/integers (_upcast), and
  // the losses too (_upcast_non_float: everything but float32/float64 becomes
  // float32), so both forms give float32 unless the boxes are float64.
  return boxes_type == at::kDouble ? at::kDouble : at::kFloat;
}

at::ScalarType box_overlaps_compute_type(at::ScalarType boxes_type) {
  if (boxes_type == at::kInt || boxes_type == at::kLong) return at::kDouble;
  return accumulate_type_of(boxes_type);
}

at::Tensor box_overlaps(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view mode, bool aligned,
                        double eps) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("pydetops::box_overlaps", "").typed<decltype(box_overlaps)>();
  return op.call(boxes1, boxes2, mode, aligned, eps);
}

std::tuple<at::Tensor, at::Tensor> box_overlaps_backward(const at::Tensor& grad, const at::Tensor& boxes1,
                                                         const at::Tensor& boxes2, c10::string_view mode,
                                                         bool aligned, double eps) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pydetops::_box_overlaps_backward", "")
                       .typed<decltype(box_overlaps_backward)>();
  return op.call(grad, boxes1, boxes2, mode, aligned, eps);
}

}  // namespace pydetops

TORCH_LIBRARY_FRAGMENT(pydetops, m) {
  // The module whose import registers the fake kernels (register_fake in
  // pydetops/ops/boxes.py): torch checks it names exactly that module.
  m.set_python_module("pydetops.ops.boxes");
  m.def("box_overlaps(Tensor boxes1, Tensor boxes2, str mode=\"iou\", bool aligned=False, float eps=0.0) -> Tensor");
  m.def("_box_overlaps_backward(Tensor grad, Tensor boxes1, Tensor boxes2, str mode, bool aligned, float eps) -> (Tensor, Tensor)");
}
