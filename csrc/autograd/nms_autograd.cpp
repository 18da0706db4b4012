// The NMS family is not differentiable (indices, and scores that are a
// selection). These Autograd kernels run the op below autograd so that inputs
// that require grad are accepted and the outputs simply carry no graph.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "ops/nms.h"

namespace pydetops {
namespace {

at::Tensor nms_autograd(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return nms(boxes, scores, iou_threshold);
}

at::Tensor batched_nms_autograd(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                                double iou_threshold) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return batched_nms(boxes, scores, idxs, iou_threshold);
}

std::tuple<at::Tensor, at::Tensor> soft_nms_autograd(const at::Tensor& boxes, const at::Tensor& scores,
                                                     double iou_threshold, double sigma, double score_threshold,
                                                     c10::string_view method) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return soft_nms(boxes, scores, iou_threshold, sigma, score_threshold, method);
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, Autograd, m) {
  m.impl("nms", &pydetops::nms_autograd);
  m.impl("batched_nms", &pydetops::batched_nms_autograd);
  m.impl("soft_nms", &pydetops::soft_nms_autograd);
}
