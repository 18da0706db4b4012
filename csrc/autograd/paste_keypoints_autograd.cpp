// paste_masks and heatmaps_to_keypoints are inference-only and not
// differentiable (a resampled copy pasted at integer positions; an argmax).
// As for the NMS family, these Autograd kernels run the ops below autograd so
// that inputs that require grad are accepted and the outputs carry no graph.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "ops/paste_keypoints.h"

namespace pydetops {
namespace {

at::Tensor paste_masks_autograd(const at::Tensor& masks, const at::Tensor& boxes, int64_t image_height,
                                int64_t image_width, int64_t padding) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return paste_masks(masks, boxes, image_height, image_width, padding);
}

std::tuple<at::Tensor, at::Tensor> heatmaps_to_keypoints_autograd(const at::Tensor& heatmaps, const at::Tensor& rois) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return heatmaps_to_keypoints(heatmaps, rois);
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, Autograd, m) {
  m.impl("paste_masks", &pydetops::paste_masks_autograd);
  m.impl("heatmaps_to_keypoints", &pydetops::heatmaps_to_keypoints_autograd);
}
