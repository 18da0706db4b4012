#pragma once
#include <ATen/ATen.h>
#include <c10/util/string_view.h>

namespace pydetops {

void check_conv3x3_winograd_args(const at::Tensor& input, const at::Tensor& weight,
                                 const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& residual,
                                 c10::string_view activation);

at::Tensor conv3x3_winograd(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                            const c10::optional<at::Tensor>& residual, c10::string_view activation);

}  // namespace pydetops
