// Schema of sigmoid_focal_loss: torchvision.ops.sigmoid_focal_loss fused into
// one pass (forward) and one pass (backward, _sigmoid_focal_loss_backward,
// gradients of inputs and targets). The per-element math is in
// common/focal_loss_math.h.
#include "ops/sigmoid_focal_loss.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "common/checks.h"

namespace pydetops {

LossReduction parse_loss_reduction(c10::string_view reduction) {
  if (reduction == "none") return LossReduction::None;
  if (reduction == "mean") return LossReduction::Mean;
  if (reduction == "sum") return LossReduction::Sum;
  TORCH_CHECK_VALUE(false, "reduction must be one of 'none', 'mean', 'sum', got '", reduction, "'");
}

void check_sigmoid_focal_loss_args(const at::Tensor& inputs, const at::Tensor& targets, double alpha, double gamma,
                                   c10::string_view reduction) {
  check_floating(inputs, "inputs");
  check_floating(targets, "targets");
  TORCH_CHECK_VALUE(inputs.sizes() == targets.sizes(), "targets must have the shape of inputs ", inputs.sizes(),
                    ", got ", targets.sizes());
  check_same_device(inputs, "inputs", targets, "targets");
  check_finite_scalar(alpha, "alpha");
  check_non_negative(gamma, "gamma");
  parse_loss_reduction(reduction);
}

void check_sigmoid_focal_loss_grad(const at::Tensor& grad, const at::Tensor& inputs, c10::string_view reduction) {
  if (parse_loss_reduction(reduction) == LossReduction::None) {
    TORCH_CHECK_VALUE(grad.sizes() == inputs.sizes(), "grad must have the shape of inputs ", inputs.sizes(),
                      ", got ", grad.sizes());
  } else {
    TORCH_CHECK_VALUE(grad.numel() == 1, "grad must be a scalar for reduction '", reduction, "', got shape ",
                      grad.sizes());
  }
  check_floating(grad, "grad");
  check_same_device(grad, "grad", inputs, "inputs");
}

at::Tensor sigmoid_focal_loss(const at::Tensor& inputs, const at::Tensor& targets, double alpha, double gamma,
                              c10::string_view reduction) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pydetops::sigmoid_focal_loss", "")
                       .typed<decltype(sigmoid_focal_loss)>();
  return op.call(inputs, targets, alpha, gamma, reduction);
}

std::tuple<at::Tensor, at::Tensor> sigmoid_focal_loss_backward(const at::Tensor& grad, const at::Tensor& inputs,
                                                               const at::Tensor& targets, double alpha, double gamma,
                                                               c10::string_view reduction) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pydetops::_sigmoid_focal_loss_backward", "")
                       .typed<decltype(sigmoid_focal_loss_backward)>();
  return op.call(grad, inputs, targets, alpha, gamma, reduction);
}

}  // namespace pydetops

TORCH_LIBRARY_FRAGMENT(pydetops, m) {
  m.set_python_module("pydetops.ops.detection");  // where the fake kernels are registered
  m.def(
      "sigmoid_focal_loss(Tensor inputs, Tensor targets, float alpha=0.25, float gamma=2.0, "
      "str reduction=\"none\") -> Tensor");
  m.def(
      "_sigmoid_focal_loss_backward(Tensor grad, Tensor inputs, Tensor targets, float alpha, float gamma, "
      "str reduction) -> (Tensor, Tensor)");
}
