// Schema of conv3x3_winograd (a 3x3, stride-1, padding-1 convolution by
// Winograd's minimal filtering F(2x2, 3x3), with bias, an optional residual
// and ReLU fused) and its argument checks. Inference only: no autograd kernel
// (the Python wrapper refuses inputs that require grad). CPU only: on CUDA
// cuDNN already picks Winograd itself; callers use torch's conv2d there.
//
// `weight` is the transformed filter bank U = G g G^T, Tensor[16, C, K]
// (pydetops.ops.winograd_weight), computed once per layer.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "common/checks.h"
#include "ops/conv3x3_winograd.h"

namespace pydetops {

void check_conv3x3_winograd_args(const at::Tensor& input, const at::Tensor& weight,
                                 const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& residual,
                                 c10::string_view activation) {
  TORCH_CHECK_VALUE(input.dim() == 4, "input must be a Tensor[N, C, H, W], got shape ", input.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 3 && weight.size(0) == 16,
                    "weight must be the Winograd-transformed filters, a Tensor[16, C, K] "
                    "(pydetops.ops.winograd_weight), got shape ", weight.sizes());
  TORCH_CHECK_TYPE(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble,
                   "input must be float32 or float64, got ", input.scalar_type());
  TORCH_CHECK_TYPE(weight.scalar_type() == input.scalar_type(), "weight must have input's dtype ",
                   input.scalar_type(), ", got ", weight.scalar_type());
  TORCH_CHECK_VALUE(weight.size(1) == input.size(1), "weight is for ", weight.size(1),
                    " input channels but input has ", input.size(1));
  check_same_device(input, "input", weight, "weight");
  const int64_t K = weight.size(2);
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == K, "bias must be a Tensor[", K, "], got shape ",
                      bias->sizes());
    TORCH_CHECK_TYPE(bias->scalar_type() == input.scalar_type(), "bias must have input's dtype ",
                     input.scalar_type(), ", got ", bias->scalar_type());
    check_same_device(input, "input", *bias, "bias");
  }
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
  checked_mul(checked_mul(input.size(0), input.size(2), "input"), input.size(3), "input");
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
}
