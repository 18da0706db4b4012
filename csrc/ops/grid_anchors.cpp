// Schema of grid_anchors: the base (cell) anchors of one feature map shifted to
// every cell of an h x w grid with strides (sy, sx), as Faster R-CNN's RPN does.
// Output row (y * w + x) * A + a is base[a] + (x*sx, y*sy, x*sx, y*sy):
// cells in row-major order, the A anchors of a cell together (torchvision's order).
// Not differentiable (anchors are constants); see csrc/autograd/grid_anchors_autograd.cpp.
#include "ops/grid_anchors.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "common/checks.h"

namespace pydetops {

void check_grid_anchors_args(const at::Tensor& base_anchors, at::IntArrayRef feature_size, at::IntArrayRef stride) {
  check_box_tensor(base_anchors, "base_anchors");
  check_floating(base_anchors, "base_anchors");
  TORCH_CHECK_VALUE(feature_size.size() == 2, "feature_size must be (height, width), got ", feature_size);
  TORCH_CHECK_VALUE(feature_size[0] >= 0 && feature_size[1] >= 0,
                    "feature_size must be (height, width) with both >= 0, got ", feature_size);
  TORCH_CHECK_VALUE(stride.size() == 2, "stride must be (stride_y, stride_x), got ", stride);
  TORCH_CHECK_VALUE(stride[0] >= 1 && stride[1] >= 1, "stride must be (stride_y, stride_x) with both >= 1, got ",
                    stride);
  // The output and the largest shift must fit in int64 (checked in floating point: no overflow).
  const double rows = static_cast<double>(feature_size[0]) * static_cast<double>(feature_size[1]) *
                      static_cast<double>(base_anchors.size(0));
  TORCH_CHECK_VALUE(rows * 4.0 < 4.0e18, "feature_size ", feature_size, " with ", base_anchors.size(0),
                    " base_anchors gives too many anchors");
  TORCH_CHECK_VALUE(static_cast<double>(feature_size[0]) * static_cast<double>(stride[0]) < 4.0e18 &&
                        static_cast<double>(feature_size[1]) * static_cast<double>(stride[1]) < 4.0e18,
                    "stride ", stride, " times feature_size ", feature_size, " overflows int64");
  check_result_size(rows * 4.0, base_anchors.element_size(), "feature_size");
}

at::Tensor grid_anchors(const at::Tensor& base_anchors, at::IntArrayRef feature_size, at::IntArrayRef stride) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pydetops::grid_anchors", "")
                       .typed<decltype(grid_anchors)>();
  return op.call(base_anchors, feature_size, stride);
}

}  // namespace pydetops

TORCH_LIBRARY_FRAGMENT(pydetops, m) {
  m.set_python_module("pydetops.ops.anchors_coding");  // where the fake kernels are registered
  m.def("grid_anchors(Tensor base_anchors, int[2] feature_size, int[2] stride) -> Tensor");
}
