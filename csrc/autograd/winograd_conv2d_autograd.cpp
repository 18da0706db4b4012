// Autograd of winograd_conv2d: saves input and weight; backward computes only
// the gradients that are needed (the input's by Winograd, the filters' and
// bias' by ATen's convolution_backward).
#include <torch/autograd.h>
#include <torch/library.h>

#include "autograd/double_backward.h"
#include "ops/conv3x3_winograd.h"

namespace pydetops {
namespace {

class WinogradConv2dFunction : public torch::autograd::Function<WinogradConv2dFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const c10::optional<at::Tensor>& bias) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({input, weight});
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    return pydetops::winograd_conv2d(input, weight, bias);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      has_bias && ctx->needs_input_grad(2)};
    at::Tensor grad_input, grad_weight, grad_bias;
    if (grad_outputs[0].defined() && (mask[0] || mask[1] || mask[2])) {
      const at::Tensor& g = grad_outputs[0];
      const bool graph = at::GradMode::is_enabled() &&
                         (g.requires_grad() || saved[0].requires_grad() || saved[1].requires_grad());
      std::tuple<at::Tensor, at::Tensor, at::Tensor> grads;
      {
        at::AutoGradMode no_graph(false);
        grads = pydetops::winograd_conv2d_backward(g, saved[0], saved[1], mask);
      }
      if (mask[0]) grad_input = std::get<0>(grads);
      if (mask[1]) grad_weight = std::get<1>(grads);
      if (mask[2]) grad_bias = std::get<2>(grads);
      if (graph) {  // create_graph=True: a node that raises when differentiated again
        const at::Tensor& anchor = g.requires_grad() ? g : (saved[0].requires_grad() ? saved[0] : saved[1]);
        auto tied = guard_double_backward("winograd_conv2d", anchor, {grad_input, grad_weight, grad_bias});
        grad_input = tied[0];
        grad_weight = tied[1];
        grad_bias = tied[2];
      }
    }
    return {grad_input, grad_weight, grad_bias};
  }
};

at::Tensor winograd_conv2d_autograd(const at::Tensor& input, const at::Tensor& weight,
                                    const c10::optional<at::Tensor>& bias) {
  return WinogradConv2dFunction::apply(input, weight, bias);
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, Autograd, m) { m.impl("winograd_conv2d", &pydetops::winograd_conv2d_autograd); }
