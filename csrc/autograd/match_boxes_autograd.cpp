// match_boxes is not differentiable (indices, and IoUs used as labels). This
// Autograd kernel runs the op below autograd so that inputs that require grad
// are accepted and the outputs carry no graph (as nms does).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "ops/match_boxes.h"

namespace pydetops {
namespace {

std::tuple<at::Tensor, at::Tensor> match_boxes_autograd(const at::Tensor& anchors, const at::Tensor& gt_boxes,
                                                        double high_threshold, double low_threshold,
                                                        bool allow_low_quality_matches) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return match_boxes(anchors, gt_boxes, high_threshold, low_threshold, allow_low_quality_matches);
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, Autograd, m) {
  m.impl("match_boxes", &pydetops::match_boxes_autograd);
}
