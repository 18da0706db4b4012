#pragma once
#include <ATen/ATen.h>
#include <c10/util/string_view.h>

#include <array>
#include <tuple>

namespace pydetops {

void check_conv3x3_winograd_args(const at::Tensor& input, const at::Tensor& weight,
                                 const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& residual,
                                 c10::string_view activation);

at::Tensor conv3x3_winograd(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                            const c10::optional<at::Tensor>& residual, c10::string_view activation);

void check_winograd_conv2d_args(const at::Tensor& input, const at::Tensor& weight,
                                const c10::optional<at::Tensor>& bias);

at::Tensor winograd_conv2d(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias);

std::tuple<at::Tensor, at::Tensor, at::Tensor> winograd_conv2d_backward(const at::Tensor& grad_output,
                                                                        const at::Tensor& input,
                                                                        const at::Tensor& weight,
                                                                        std::array<bool, 3> output_mask);

}  // namespace pydetops
