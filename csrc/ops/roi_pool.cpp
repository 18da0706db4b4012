// Schema of roi_pool (Fast R-CNN's RoIPool, torchvision semantics) and its backward.
#include "ops/roi_pool.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "common/checks.h"
#include "ops/roi_align.h"

namespace pydetops {

void check_roi_pool_forward_args(const at::Tensor& input, const at::Tensor& boxes, double spatial_scale,
                                 int64_t pooled_height, int64_t pooled_width) {
  check_roi_align_args(input, boxes, spatial_scale, pooled_height, pooled_width);
  TORCH_CHECK_VALUE(input.size(2) * input.size(3) < (int64_t(1) << 31), "input: H * W must fit in int32 (argmax), got ",
                    input.size(2), " x ", input.size(3));
  // output and argmax (int32) together
  check_result_size(static_cast<double>(boxes.size(0)) * static_cast<double>(input.size(1)) *
                        static_cast<double>(pooled_height) * static_cast<double>(pooled_width),
                    input.element_size() + 4, "output_size");
}

void check_roi_pool_backward_args(const at::Tensor& grad, const at::Tensor& boxes, const at::Tensor& argmax,
                                  double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                                  int64_t batch_size, int64_t channels, int64_t height, int64_t width) {
  check_roi_pool_args(spatial_scale, pooled_height, pooled_width);
  TORCH_CHECK_VALUE(batch_size >= 0 && channels >= 0 && height >= 0 && width >= 0,
                    "the input sizes must be >= 0, got ", batch_size, ", ", channels, ", ", height, ", ", width);
  check_floating(grad, "grad");
  check_roi_boxes(boxes, boxes.scalar_type(), grad.device(), batch_size);
  check_roi_grad(grad, boxes, channels, pooled_height, pooled_width);
  TORCH_CHECK_TYPE(argmax.scalar_type() == at::kInt, "argmax must be an int32 tensor, got ", argmax.scalar_type());
  TORCH_CHECK_VALUE(argmax.sizes() == grad.sizes(), "argmax must have the shape of grad ", grad.sizes(), ", got ",
                    argmax.sizes());
  check_same_device(grad, "grad", argmax, "argmax");
}

std::tuple<at::Tensor, at::Tensor> roi_pool(const at::Tensor& input, const at::Tensor& boxes, double spatial_scale,
                                            int64_t pooled_height, int64_t pooled_width) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("pydetops::roi_pool", "").typed<decltype(roi_pool)>();
  return op.call(input, boxes, spatial_scale, pooled_height, pooled_width);
}

at::Tensor roi_pool_backward(const at::Tensor& grad, const at::Tensor& boxes, const at::Tensor& argmax,
                             double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                             c10::SymInt batch_size, c10::SymInt channels, c10::SymInt height, c10::SymInt width) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pydetops::_roi_pool_backward", "")
                       .typed<decltype(roi_pool_backward)>();
  return op.call(grad, boxes, argmax, spatial_scale, pooled_height, pooled_width, std::move(batch_size),
                 std::move(channels), std::move(height), std::move(width));
}

}  // namespace pydetops

TORCH_LIBRARY_FRAGMENT(pydetops, m) {
  m.set_python_module("pydetops.ops.roi");
  m.def("roi_pool(Tensor input, Tensor boxes, float spatial_scale, int pooled_height, int pooled_width) "
        "-> (Tensor output, Tensor argmax)");
  m.def("_roi_pool_backward(Tensor grad, Tensor boxes, Tensor argmax, float spatial_scale, int pooled_height, "
        "int pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor");
}
