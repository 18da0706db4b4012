// Autograd of encode_boxes: gradients for reference_boxes and proposals; the
// weights are constants (no gradient flows to them).
#include <torch/autograd.h>
#include <torch/library.h>

#include "ops/encode_boxes.h"

namespace pydetops {
namespace {

class EncodeBoxesFunction : public torch::autograd::Function<EncodeBoxesFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& reference_boxes,
                            const at::Tensor& proposals, const at::Tensor& weights) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({reference_boxes, proposals, weights});
    return encode_boxes(reference_boxes, proposals, weights);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    auto grads = encode_boxes_backward(grad_outputs[0], saved[0], saved[1], saved[2]);
    at::Tensor gr = saved[0].is_floating_point() ? std::get<0>(grads) : at::Tensor();
    at::Tensor gq = saved[1].is_floating_point() ? std::get<1>(grads) : at::Tensor();
    return {gr, gq, at::Tensor()};
  }
};

at::Tensor encode_boxes_autograd(const at::Tensor& reference_boxes, const at::Tensor& proposals,
                                 const at::Tensor& weights) {
  return EncodeBoxesFunction::apply(reference_boxes, proposals, weights);
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, Autograd, m) {
  m.impl("encode_boxes", &pydetops::encode_boxes_autograd);
}
