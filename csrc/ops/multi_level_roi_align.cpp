// Schema of multi_level_roi_align: RoIAlign of every RoI from its own pyramid
// level (levels[k] in [0, L); any other value pools to zeros, as torchvision's
// MultiScaleRoIAlign does for RoIs it maps to no level), in one kernel call.
#include "ops/multi_level_roi_align.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "common/checks.h"
#include "ops/roi_align.h"

namespace pydetops {

void check_multi_level_args(at::TensorList features, const at::Tensor& boxes, const at::Tensor& levels,
                            at::ArrayRef<double> spatial_scales, int64_t pooled_height, int64_t pooled_width) {
  TORCH_CHECK_VALUE(!features.empty(), "features must hold at least one Tensor[N, C, H, W]");
  TORCH_CHECK_VALUE(spatial_scales.size() == features.size(), "spatial_scales must hold one scale per feature map (",
                    features.size(), "), got ", spatial_scales.size());
  const at::Tensor& f0 = features[0];
  for (size_t l = 0; l < features.size(); ++l) {
    check_roi_feature(features[l], "features");
    TORCH_CHECK_VALUE(features[l].size(0) == f0.size(0) && features[l].size(1) == f0.size(1),
                      "features must all have the same batch size and channels, got ", f0.sizes(), " and ",
                      features[l].sizes(), " (level ", l, ")");
    TORCH_CHECK_TYPE(features[l].scalar_type() == f0.scalar_type(), "features must all have the same dtype, got ",
                     f0.scalar_type(), " and ", features[l].scalar_type());
    TORCH_CHECK_VALUE(features[l].device() == f0.device(), "features must all be on the same device");
    TORCH_CHECK_VALUE(std::isfinite(spatial_scales[l]) && spatial_scales[l] > 0,
                      "spatial_scales must be finite numbers > 0, got ", spatial_scales[l]);
  }
  check_roi_pool_args(1.0, pooled_height, pooled_width);
  check_roi_boxes(boxes, f0.scalar_type(), f0.device(), f0.size(0));
  TORCH_CHECK_TYPE(levels.scalar_type() == at::kLong, "levels must be an int64 tensor, got ", levels.scalar_type());
  TORCH_CHECK_VALUE(levels.dim() == 1 && levels.size(0) == boxes.size(0),
                    "levels must be a Tensor[K] with one level per box (K = ", boxes.size(0), "), got shape ",
                    levels.sizes());
  check_same_device(levels, "levels", boxes, "boxes");
  check_result_size(static_cast<double>(boxes.size(0)) * static_cast<double>(f0.size(1)) *
                        static_cast<double>(pooled_height) * static_cast<double>(pooled_width),
                    f0.element_size(), "output_size");
}

at::Tensor multi_level_roi_align(at::TensorList features, const at::Tensor& boxes, const at::Tensor& levels,
                                 at::ArrayRef<double> spatial_scales, int64_t pooled_height, int64_t pooled_width,
                                 int64_t sampling_ratio, bool aligned) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pydetops::multi_level_roi_align", "")
                       .typed<decltype(multi_level_roi_align)>();
  return op.call(features, boxes, levels, spatial_scales, pooled_height, pooled_width, sampling_ratio, aligned);
}

std::vector<at::Tensor> multi_level_roi_align_backward(const at::Tensor& grad, const at::Tensor& boxes,
                                                       const at::Tensor& levels, at::ArrayRef<double> spatial_scales,
                                                       int64_t pooled_height, int64_t pooled_width,
                                                       int64_t sampling_ratio, bool aligned, c10::SymInt batch_size,
                                                       c10::SymInt channels, c10::SymIntArrayRef heights,
                                                       c10::SymIntArrayRef widths) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pydetops::_multi_level_roi_align_backward", "")
                       .typed<decltype(multi_level_roi_align_backward)>();
  return op.call(grad, boxes, levels, spatial_scales, pooled_height, pooled_width, sampling_ratio, aligned,
                 std::move(batch_size), std::move(channels), heights, widths);
}

}  // namespace pydetops

TORCH_LIBRARY_FRAGMENT(pydetops, m) {
  m.set_python_module("pydetops.ops.roi");
  m.def("multi_level_roi_align(Tensor[] features, Tensor boxes, Tensor levels, float[] spatial_scales, "
        "int pooled_height, int pooled_width, int sampling_ratio, bool aligned) -> Tensor");
  m.def("_multi_level_roi_align_backward(Tensor grad, Tensor boxes, Tensor levels, float[] spatial_scales, "
        "int pooled_height, int pooled_width, int sampling_ratio, bool aligned, SymInt batch_size, SymInt channels, "
        "SymInt[] heights, SymInt[] widths) -> Tensor[]");
}
