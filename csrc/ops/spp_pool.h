#pragma once
#include <ATen/ATen.h>

#include <vector>

namespace pydetops {

// Calls through the dispatcher. spp_pool returns (output [K, C * sum(l*l)],
// argmax int32 of the same shape: the h * W + w of each maximum, -1 for an empty bin).
std::tuple<at::Tensor, at::Tensor> spp_pool(const at::Tensor& input, const at::Tensor& rois, at::IntArrayRef levels,
                                            double spatial_scale);
at::Tensor spp_pool_backward(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax,
                             at::IntArrayRef levels, c10::SymInt batch_size, c10::SymInt channels,
                             c10::SymInt height, c10::SymInt width);

// Shared by every backend; returns sum(l * l) over the levels.
int64_t check_spp_args(const at::Tensor& input, const at::Tensor& rois, at::IntArrayRef levels,
                       double spatial_scale);

}  // namespace pydetops
