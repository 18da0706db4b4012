#pragma once
#include <ATen/ATen.h>

namespace pydetops {

// Calls through the dispatcher.
at::Tensor grid_anchors(const at::Tensor& base_anchors, at::IntArrayRef feature_size, at::IntArrayRef stride);

// Shared by every backend: argument checks.
void check_grid_anchors_args(const at::Tensor& base_anchors, at::IntArrayRef feature_size, at::IntArrayRef stride);

}  // namespace pydetops
