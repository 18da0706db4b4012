#pragma once
#include <ATen/ATen.h>

#include <array>

namespace pydetops {

// Calls through the dispatcher.
at::Tensor encode_boxes(const at::Tensor& reference_boxes, const at::Tensor& proposals, const at::Tensor& weights);
std::tuple<at::Tensor, at::Tensor> encode_boxes_backward(const at::Tensor& grad, const at::Tensor& reference_boxes,
                                                         const at::Tensor& proposals, const at::Tensor& weights);

// Shared by every backend: argument checks, the output dtype and the weights as numbers.
void check_encode_boxes_args(const at::Tensor& reference_boxes, const at::Tensor& proposals,
                             const at::Tensor& weights);
// The promoted dtype of the two box sets; float32 when that is an integer type.
at::ScalarType encode_boxes_result_type(const at::Tensor& reference_boxes, const at::Tensor& proposals);
// The 4 weights read into host numbers (a device-to-host copy for device tensors).
std::array<double, 4> encode_weights_values(const at::Tensor& weights);

}  // namespace pydetops
