#pragma once
#include <ATen/ATen.h>

namespace pydetops {

enum class LossReduction : int { None = 0, Mean = 1, Sum = 2 };

// Calls through the dispatcher.
at::Tensor sigmoid_focal_loss(const at::Tensor& inputs, const at::Tensor& targets, double alpha, double gamma,
                              c10::string_view reduction);
std::tuple<at::Tensor, at::Tensor> sigmoid_focal_loss_backward(const at::Tensor& grad, const at::Tensor& inputs,
                                                               const at::Tensor& targets, double alpha, double gamma,
                                                               c10::string_view reduction);

// Shared by every backend: argument checks (ValueError / TypeError naming the argument).
LossReduction parse_loss_reduction(c10::string_view reduction);
void check_sigmoid_focal_loss_args(const at::Tensor& inputs, const at::Tensor& targets, double alpha, double gamma,
                                   c10::string_view reduction);
// The backward's extra check: grad has the forward output's shape.
void check_sigmoid_focal_loss_grad(const at::Tensor& grad, const at::Tensor& inputs, c10::string_view reduction);

}  // namespace pydetops
