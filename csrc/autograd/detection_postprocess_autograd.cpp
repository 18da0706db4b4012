// detection_postprocess is not differentiable (a selection by score and NMS).
// This Autograd kernel runs the op below autograd so that inputs that require
// grad are accepted and the outputs carry no graph (as nms does).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "ops/detection_postprocess.h"

namespace pydetops {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> detection_postprocess_autograd(
    const at::Tensor& scores, const at::Tensor& codes, const at::Tensor& anchors, at::IntArrayRef level_sizes,
    at::IntArrayRef image_sizes, double score_thresh, int64_t topk_per_level, double nms_thresh, int64_t max_det,
    at::ArrayRef<double> weights, double bbox_xform_clip, double min_size, bool nms_by_level,
    int64_t topk_per_class) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return detection_postprocess(scores, codes, anchors, level_sizes, image_sizes, score_thresh, topk_per_level,
                               nms_thresh, max_det, weights, bbox_xform_clip, min_size, nms_by_level,
                               topk_per_class);
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, Autograd, m) {
  m.impl("detection_postprocess", &pydetops::detection_postprocess_autograd);
}
