// Autograd of sigmoid_focal_loss: saves inputs and targets; the backward op
// recomputes each element's terms. alpha, gamma and reduction are constants.
#include <torch/autograd.h>
#include <torch/library.h>

#include "autograd/double_backward.h"
#include "ops/sigmoid_focal_loss.h"

namespace pydetops {
namespace {

class SigmoidFocalLossFunction : public torch::autograd::Function<SigmoidFocalLossFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& inputs,
                            const at::Tensor& targets, double alpha, double gamma, c10::string_view reduction) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({inputs, targets});
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["gamma"] = gamma;
    ctx->saved_data["reduction"] = std::string(reduction);
    return sigmoid_focal_loss(inputs, targets, alpha, gamma, reduction);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const std::string reduction = ctx->saved_data["reduction"].toStringRef();
    std::vector<at::Tensor> grads(2);
    {
      at::AutoDispatchBelowADInplaceOrView below;
      std::tie(grads[0], grads[1]) = sigmoid_focal_loss_backward(
          grad_outputs[0], saved[0], saved[1], ctx->saved_data["alpha"].toDouble(), ctx->saved_data["gamma"].toDouble(),
          reduction);
    }
    // The backward kernel has no derivative of its own: under create_graph the gradients
    // are tied to every tensor they depend on by a node that raises when differentiated
    // (a gradient penalty through the loss), instead of silently giving zeros.
    for (const at::Tensor& depends_on : {grad_outputs[0], saved[0], saved[1]})
      grads = guard_double_backward("sigmoid_focal_loss", depends_on, std::move(grads));
    return {grads[0], grads[1], at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor sigmoid_focal_loss_autograd(const at::Tensor& inputs, const at::Tensor& targets, double alpha,
                                       double gamma, c10::string_view reduction) {
  return SigmoidFocalLossFunction::apply(inputs, targets, alpha, gamma, reduction);
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, Autograd, m) {
  m.impl("sigmoid_focal_loss", &pydetops::sigmoid_focal_loss_autograd);
}
