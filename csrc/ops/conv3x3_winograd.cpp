// Schemas of the Winograd F(2x2, 3x3) convolutions (3x3, stride 1, padding 1)
// and their argument checks. CPU only: on CUDA cuDNN already picks Winograd
// itself; callers use torch's conv2d there.
//
// conv3x3_winograd: inference. `weight` is the transformed filter bank
// U = G g G^T, Tensor[16, C, K] (pydetops.ops.winograd_weight), computed once
// per layer; bias, an optional residual and ReLU fused. No autograd kernel
// (the Python wrapper refuses inputs that require grad).
//
// winograd_conv2d: training. The plain filters Tensor[K, C, 3, 3] (transformed
// at each call, a few microseconds per layer), differentiable: the input's
// gradient is the same convolution of the output's gradient with the flipped,
// transposed filters (Winograd again); the filters' and bias' gradients are
// ATen's convolution_backward (_winograd_conv2d_backward).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "common/checks.h"
#include "ops/conv3x3_winograd.h"

namespace pydetops {

namespace {

// input Tensor[N, C, H, W] float32/float64; weight of input's dtype and device with C in its
// dimension 1; bias (if any) Tensor[K] of input's dtype and device.
void check_input_weight_bias(const at::Tensor& input, const at::Tensor& weight, int64_t K,
                             const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(input.dim() == 4, "input must be a Tensor[N, C, H, W], got shape ", input.sizes());
  TORCH_CHECK_TYPE(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble,
                   "input must be float32 or float64, got ", input.scalar_type());
  TORCH_CHECK_TYPE(weight.scalar_type() == input.scalar_type(), "weight must have input's dtype ",
                   input.scalar_type(), ", got ", weight.scalar_type());
  TORCH_CHECK_VALUE(weight.size(1) == input.size(1), "weight is for ", weight.size(1),
                    " input channels but input has ", input.size(1));
  check_same_device(input, "input", weight, "weight");
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == K, "bias must be a Tensor[", K, "], got shape ",
                      bias->sizes());
    TORCH_CHECK_TYPE(bias->scalar_type() == input.scalar_type(), "bias must have input's dtype ",
                     input.scalar_type(), ", got ", bias->scalar_type());
    check_same_device(input, "input", *bias, "bias");
  }
  checked_mul(checked_mul(input.size(0), input.size(2), "input"), input.size(3), "input");
}

}  // namespace

void check_conv3x3_winograd_args(const at::Tensor& input, const at::Tensor& weight,
                                 const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& residual,
                                 c10::string_view activation) {
  TORCH_CHECK_VALUE(weight.dim() == 3 && weight.size(0) == 16,
                    "weight must be the Winograd-transformed filters, a Tensor[16, C, K] "
                    "(pydetops.ops.winograd_weight), got shape ", weight.sizes());
  const int64_t K = weight.size(2);
  check_input_weight_bias(input, weight, K, bias);
  if (residual.has_value() && residual->defined()) {
    TORCH_CHECK_VALUE(residual->dim() == 4 && residual->size(0) == input.size(0) && residual->size(1) == K &&
                          residual->size(2) == input.size(2) && residual->size(3) == input.size(3),
                      "residual must be a Tensor[", input.size(0), ", ", K, ", ", input.size(2), ", ", input.size(3),
                      "] (the output's shape), got shape ", residual->sizes());
    TORCH_CHECK_TYPE(residual->scalar_type() == input.scalar_type(), "residual must have input's dtype ",
                     input.scalar_type(), ", got ", residual->scalar_type());
    check_same_device(input, "input", *residual, "residual");
  }
  TORCH_CHECK_VALUE(activation == "none" || activation == "relu", "activation must be 'none' or 'relu', got '",
                    std::string(activation), "'");
}

void check_winograd_conv2d_args(const at::Tensor& input, const at::Tensor& weight,
                                const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(2) == 3 && weight.size(3) == 3,
                    "weight must be a Tensor[K, C, 3, 3], got shape ", weight.sizes());
  check_input_weight_bias(input, weight, weight.size(0), bias);
}

at::Tensor winograd_conv2d(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pydetops::winograd_conv2d", "")
                       .typed<decltype(winograd_conv2d)>();
  return op.call(input, weight, bias);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> winograd_conv2d_backward(const at::Tensor& grad_output,
                                                                        const at::Tensor& input,
                                                                        const at::Tensor& weight,
                                                                        std::array<bool, 3> output_mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pydetops::_winograd_conv2d_backward", "")
                       .typed<decltype(winograd_conv2d_backward)>();
  return op.call(grad_output, input, weight, output_mask);
}

at::Tensor conv3x3_winograd(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                            const c10::optional<at::Tensor>& residual, c10::string_view activation) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pydetops::conv3x3_winograd", "")
                       .typed<decltype(conv3x3_winograd)>();
  return op.call(input, weight, bias, residual, activation);
}

}  // namespace pydetops

TORCH_LIBRARY_FRAGMENT(pydetops, m) {
  m.set_python_module("pydetops.ops.winograd");  // where the fake kernel is registered
  m.def(
      "conv3x3_winograd(Tensor input, Tensor weight, Tensor? bias=None, Tensor? residual=None, "
      "str activation=\"none\") -> Tensor");
  m.def("winograd_conv2d(Tensor input, Tensor weight, Tensor? bias=None) -> Tensor");
  m.def(
      "_winograd_conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
}
