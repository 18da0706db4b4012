// Schemas of ps_roi_pool (position-sensitive average RoI pooling, R-FCN) and
// its backward, and dispatcher callers. Checks live in ops/ps_roi_align.cpp.
#include "ops/ps_roi_pool.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace pydetops {

at::Tensor ps_roi_pool(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_height,
                       int64_t pooled_width) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pydetops::ps_roi_pool", "")
                       .typed<decltype(ps_roi_pool)>();
  return op.call(input, rois, spatial_scale, pooled_height, pooled_width);
}

at::Tensor ps_roi_pool_backward(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                int64_t pooled_height, int64_t pooled_width, c10::SymInt batch_size,
                                c10::SymInt channels, c10::SymInt height, c10::SymInt width) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pydetops::_ps_roi_pool_backward", "")
                       .typed<decltype(ps_roi_pool_backward)>();
  return op.call(grad, rois, spatial_scale, pooled_height, pooled_width, std::move(batch_size), std::move(channels),
                 std::move(height), std::move(width));
}

}  // namespace pydetops

TORCH_LIBRARY_FRAGMENT(pydetops, m) {
  m.set_python_module("pydetops.ops.psroi_spp");
  m.def("ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, int pooled_height, int pooled_width) -> Tensor");
  m.def("_ps_roi_pool_backward(Tensor grad, Tensor rois, float spatial_scale, int pooled_height, "
        "int pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor");
}
