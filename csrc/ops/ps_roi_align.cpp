// Schemas of ps_roi_align (position-sensitive RoIAlign, Light-Head R-CNN) and
// its backward, the checks shared with ps_roi_pool, and dispatcher callers.
#include "ops/ps_roi_align.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "common/checks.h"
#include "ops/psroi_spp_common.h"

namespace pydetops {

namespace {
int64_t check_ps_roi_geometry(int64_t channels, double spatial_scale, int64_t pooled_height, int64_t pooled_width) {
  check_roi_op_spatial_scale(spatial_scale);
  const int64_t cells = checked_output_cells(pooled_height, pooled_width);
  TORCH_CHECK_VALUE(channels % cells == 0, "input channels (", channels,
                    ") must be a multiple of output_size[0] * output_size[1] = ", cells);
  return channels / cells;
}
}  // namespace

int64_t check_ps_roi_args(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                          int64_t pooled_height, int64_t pooled_width) {
  check_roi_op_input(input);
  check_roi_op_rois(rois, input);
  const int64_t channels_out = check_ps_roi_geometry(input.size(1), spatial_scale, pooled_height, pooled_width);
  check_result_size(static_cast<double>(rois.size(0)) * static_cast<double>(input.size(1)), input.element_size(),
                    "output_size");
  return channels_out;
}

int64_t check_ps_roi_backward_args(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                   int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                   int64_t channels, int64_t height, int64_t width, const char* op) {
  TORCH_CHECK_VALUE(batch_size >= 0 && channels >= 0 && height >= 0 && width >= 0, op,
                    ": the input sizes must be >= 0, got ", batch_size, ", ", channels, ", ", height, ", ", width);
  check_roi_op_rois(rois, grad);
  const int64_t channels_out = check_ps_roi_geometry(channels, spatial_scale, pooled_height, pooled_width);
  check_roi_op_grad(grad, {rois.size(0), channels_out, pooled_height, pooled_width}, op);
  return channels_out;
}

at::Tensor ps_roi_align(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_height,
                        int64_t pooled_width, int64_t sampling_ratio) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pydetops::ps_roi_align", "")
                       .typed<decltype(ps_roi_align)>();
  return op.call(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio);
}

at::Tensor ps_roi_align_backward(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                 int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                                 c10::SymInt batch_size, c10::SymInt channels, c10::SymInt height,
                                 c10::SymInt width) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pydetops::_ps_roi_align_backward", "")
                       .typed<decltype(ps_roi_align_backward)>();
  return op.call(grad, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, std::move(batch_size),
                 std::move(channels), std::move(height), std::move(width));
}

}  // namespace pydetops

TORCH_LIBRARY_FRAGMENT(pydetops, m) {
  m.set_python_module("pydetops.ops.psroi_spp");
  m.def("ps_roi_align(Tensor input, Tensor rois, float spatial_scale, int pooled_height, int pooled_width, "
        "int sampling_ratio) -> Tensor");
  m.def("_ps_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, int pooled_height, "
        "int pooled_width, int sampling_ratio, SymInt batch_size, SymInt channels, SymInt height, "
        "SymInt width) -> Tensor");
}
