// Small element-wise box utilities: box_area, box_convert, clip_boxes_to_image,
// remove_small_boxes. They are composites of ATen ops (registered under
// CompositeImplicitAutograd), so autograd, every device, fake tensors and
// TorchScript come from the ops they are made of. Boxes may have any leading
// dimensions (..., 4) where torchvision allows it.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

#include "common/checks.h"

namespace pydetops {
namespace {

void check_last_dim_4(const at::Tensor& boxes, const char* name) {
  TORCH_CHECK_VALUE(boxes.dim() >= 1 && boxes.size(-1) == 4, name, " must be a Tensor[..., 4], got shape ",
                    boxes.sizes());
}

// torchvision computes box_area in a type that cannot overflow: float16/bfloat16
// in float32, small integers in int32.
at::Tensor upcast(const at::Tensor& t) {
  if (t.is_floating_point()) return (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble) ? t : t.to(at::kFloat);
  return (t.scalar_type() == at::kInt || t.scalar_type() == at::kLong) ? t : t.to(at::kInt);
}

at::Tensor box_area(const at::Tensor& boxes) {
  TORCH_CHECK_VALUE(boxes.dim() == 2 && boxes.size(1) == 4, "boxes must be a Tensor[N, 4], got shape ", boxes.sizes());
  check_real(boxes, "boxes");
  const at::Tensor b = upcast(boxes);
  return (b.select(1, 2) - b.select(1, 0)) * (b.select(1, 3) - b.select(1, 1));
}

at::Tensor box_convert(const at::Tensor& boxes, c10::string_view in_fmt, c10::string_view out_fmt) {
  auto check_fmt = [](c10::string_view f, const char* name) {
    TORCH_CHECK_VALUE(f == "xyxy" || f == "xywh" || f == "cxcywh", name,
                      " must be one of 'xyxy', 'xywh', 'cxcywh', got '", f, "'");
  };
  check_fmt(in_fmt, "in_fmt");
  check_fmt(out_fmt, "out_fmt");
  check_last_dim_4(boxes, "boxes");
  check_real(boxes, "boxes");
  if (in_fmt == out_fmt) return boxes.clone();
  auto c = boxes.unbind(-1);
  at::Tensor x1, y1, x2, y2;
  if (in_fmt == "xyxy") {
    x1 = c[0]; y1 = c[1]; x2 = c[2]; y2 = c[3];
  } else if (in_fmt == "xywh") {
    x1 = c[0]; y1 = c[1]; x2 = c[0] + c[2]; y2 = c[1] + c[3];
  } else {  // cxcywh
    x1 = c[0] - 0.5 * c[2]; y1 = c[1] - 0.5 * c[3]; x2 = c[0] + 0.5 * c[2]; y2 = c[1] + 0.5 * c[3];
  }
  if (out_fmt == "xyxy") return at::stack({x1, y1, x2, y2}, -1);
  if (out_fmt == "xywh") return at::stack({x1, y1, x2 - x1, y2 - y1}, -1);
  return at::stack({(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1}, -1);
}

// A size given as a whole number clamps as an int (integer boxes stay integer,
// as torchvision with int sizes); a fractional one as a float (as torchvision).
at::Scalar size_scalar(double v) {
  if (v == std::floor(v) && v <= 9007199254740992.0) return at::Scalar(static_cast<int64_t>(v));
  return at::Scalar(v);
}

at::Tensor clip_boxes_to_image(const at::Tensor& boxes, at::ArrayRef<double> size) {
  check_last_dim_4(boxes, "boxes");
  check_real(boxes, "boxes");
  TORCH_CHECK_VALUE(size.size() == 2 && std::isfinite(size[0]) && std::isfinite(size[1]) && size[0] >= 0 &&
                        size[1] >= 0,
                    "size must be (height, width) with both finite and >= 0, got ", size);
  const at::Scalar height = size_scalar(size[0]), width = size_scalar(size[1]);
  auto c = boxes.unbind(-1);
  return at::stack({c[0].clamp(0, width), c[1].clamp(0, height), c[2].clamp(0, width), c[3].clamp(0, height)}, -1);
}

at::Tensor remove_small_boxes(const at::Tensor& boxes, double min_size) {
  TORCH_CHECK_VALUE(boxes.dim() == 2 && boxes.size(1) == 4, "boxes must be a Tensor[N, 4], got shape ", boxes.sizes());
  check_real(boxes, "boxes");
  TORCH_CHECK_VALUE(!std::isnan(min_size), "min_size must not be NaN");
  const at::Tensor w = boxes.select(1, 2) - boxes.select(1, 0);
  const at::Tensor h = boxes.select(1, 3) - boxes.select(1, 1);
  return at::nonzero(at::logical_and(w >= min_size, h >= min_size)).select(1, 0);
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_FRAGMENT(pydetops, m) {
  m.def("box_area(Tensor boxes) -> Tensor");
  m.def("box_convert(Tensor boxes, str in_fmt, str out_fmt) -> Tensor");
  m.def("clip_boxes_to_image(Tensor boxes, float[] size) -> Tensor");
  m.def("remove_small_boxes(Tensor boxes, float min_size) -> Tensor");
}

TORCH_LIBRARY_IMPL(pydetops, CompositeImplicitAutograd, m) {
  m.impl("box_area", &pydetops::box_area);
  m.impl("box_convert", &pydetops::box_convert);
  m.impl("clip_boxes_to_image", &pydetops::clip_boxes_to_image);
  m.impl("remove_small_boxes", &pydetops::remove_small_boxes);
}
