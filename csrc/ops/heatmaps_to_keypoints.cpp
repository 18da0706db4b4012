// Schema of heatmaps_to_keypoints (Keypoint R-CNN: keypoint positions and
// scores from per-RoI heatmaps) and its argument checks. Not differentiable
// (an argmax; inference only).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "common/checks.h"
#include "ops/paste_keypoints.h"

namespace pydetops {

void check_heatmaps_to_keypoints_args(const at::Tensor& heatmaps, const at::Tensor& rois) {
  TORCH_CHECK_VALUE(heatmaps.dim() == 4, "heatmaps must be a Tensor[R, K, S, S], got shape ", heatmaps.sizes());
  check_floating(heatmaps, "heatmaps");
  check_box_tensor(rois, "rois");
  check_floating(rois, "rois");
  TORCH_CHECK_VALUE(heatmaps.size(0) == rois.size(0), "heatmaps and rois must have the same length R, got heatmaps ",
                    heatmaps.sizes(), " and rois ", rois.sizes());
  check_same_device(heatmaps, "heatmaps", rois, "rois");
  TORCH_CHECK_VALUE(heatmaps.size(2) > 0 && heatmaps.size(3) > 0,
                    "heatmaps must have non-empty S x S maps, got shape ", heatmaps.sizes());
  checked_mul(heatmaps.size(0), heatmaps.size(1), "heatmaps");
}

at::ScalarType keypoints_result_dtype(const at::Tensor& heatmaps, const at::Tensor& rois) {
  return (heatmaps.scalar_type() == at::kDouble || rois.scalar_type() == at::kDouble) ? at::kDouble : at::kFloat;
}

std::tuple<at::Tensor, at::Tensor> heatmaps_to_keypoints(const at::Tensor& heatmaps, const at::Tensor& rois) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pydetops::heatmaps_to_keypoints", "")
                       .typed<decltype(heatmaps_to_keypoints)>();
  return op.call(heatmaps, rois);
}

}  // namespace pydetops

TORCH_LIBRARY_FRAGMENT(pydetops, m) {
  m.set_python_module("pydetops.ops.paste_keypoints");  // where the fake kernels are registered
  m.def("heatmaps_to_keypoints(Tensor heatmaps, Tensor rois) -> (Tensor, Tensor)");
}
