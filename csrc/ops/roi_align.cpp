// Schema of roi_align (Mask R-CNN's RoIAlign, torchvision semantics) and its
// backward, plus the RoI argument checks shared by the RoI pooling ops.
#include "ops/roi_align.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cmath>

#include "common/checks.h"
#include "ops/psroi_spp_common.h"

namespace pydetops {

void check_roi_feature(const at::Tensor& input, const char* name) {
  TORCH_CHECK_VALUE(input.dim() == 4, name, " must be a Tensor[N, C, H, W], got shape ", input.sizes());
  check_floating(input, name);
}

void check_roi_boxes(const at::Tensor& boxes, at::ScalarType dtype, c10::Device device, int64_t batch_size) {
  TORCH_CHECK_VALUE(boxes.dim() == 2 && boxes.size(1) == 5,
                    "boxes must be a Tensor[K, 5] (batch index, x1, y1, x2, y2), got shape ", boxes.sizes());
  TORCH_CHECK_TYPE(boxes.scalar_type() == dtype, "boxes must have the dtype of input (", dtype, "), got ",
                   boxes.scalar_type());
  TORCH_CHECK_VALUE(boxes.device() == device, "boxes must be on the device of input (", device, "), got ",
                    boxes.device());
  check_roi_batch_indices(boxes, batch_size);
}

void check_roi_pool_args(double spatial_scale, int64_t pooled_height, int64_t pooled_width) {
  TORCH_CHECK_VALUE(std::isfinite(spatial_scale) && spatial_scale > 0,
                    "spatial_scale must be a finite number > 0, got ", spatial_scale);
  checked_output_cells(pooled_height, pooled_width);
}

void check_roi_grad(const at::Tensor& grad, const at::Tensor& boxes, int64_t channels, int64_t pooled_height,
                    int64_t pooled_width) {
  TORCH_CHECK_VALUE(grad.dim() == 4 && grad.size(0) == boxes.size(0) && grad.size(1) == channels &&
                        grad.size(2) == pooled_height && grad.size(3) == pooled_width,
                    "grad must be a Tensor[K, C, pooled_height, pooled_width] = [", boxes.size(0), ", ", channels,
                    ", ", pooled_height, ", ", pooled_width, "], got ", grad.sizes());
  check_floating(grad, "grad");
}

void check_roi_align_args(const at::Tensor& input, const at::Tensor& boxes, double spatial_scale,
                          int64_t pooled_height, int64_t pooled_width) {
  check_roi_feature(input, "input");
  check_roi_pool_args(spatial_scale, pooled_height, pooled_width);
  check_roi_boxes(boxes, input.scalar_type(), input.device(), input.size(0));
  check_result_size(static_cast<double>(boxes.size(0)) * static_cast<double>(input.size(1)) *
                        static_cast<double>(pooled_height) * static_cast<double>(pooled_width),
                    input.element_size(), "output_size");
}

at::Tensor roi_align(const at::Tensor& input, const at::Tensor& boxes, double spatial_scale, int64_t pooled_height,
                     int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("pydetops::roi_align", "").typed<decltype(roi_align)>();
  return op.call(input, boxes, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned);
}

at::Tensor roi_align_backward(const at::Tensor& grad, const at::Tensor& boxes, double spatial_scale,
                              int64_t pooled_height, int64_t pooled_width, c10::SymInt batch_size,
                              c10::SymInt channels, c10::SymInt height, c10::SymInt width, int64_t sampling_ratio,
                              bool aligned) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pydetops::_roi_align_backward", "")
                       .typed<decltype(roi_align_backward)>();
  return op.call(grad, boxes, spatial_scale, pooled_height, pooled_width, std::move(batch_size),
                 std::move(channels), std::move(height), std::move(width), sampling_ratio, aligned);
}

}  // namespace pydetops

TORCH_LIBRARY_FRAGMENT(pydetops, m) {
  m.set_python_module("pydetops.ops.roi");
  m.def("roi_align(Tensor input, Tensor boxes, float spatial_scale, int pooled_height, int pooled_width, "
        "int sampling_ratio, bool aligned) -> Tensor");
  m.def("_roi_align_backward(Tensor grad, Tensor boxes, float spatial_scale, int pooled_height, int pooled_width, "
        "SymInt batch_size, SymInt channels, SymInt height, SymInt width, int sampling_ratio, bool aligned) -> Tensor");
}
