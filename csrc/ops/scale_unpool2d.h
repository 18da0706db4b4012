#pragma once
#include <ATen/ATen.h>

#include <array>

namespace pydetops {

// Fixed-pattern unpooling by an integer scale (s_h, s_w) of (N, C, H, W) or (C, H, W) input:
//   nearest_unpool2d:       each value copied to its whole s_h x s_w block;
//   bed_of_nails_unpool2d:  each value at the top-left of its block, zeros elsewhere.
// Both give (.., H * s_h, W * s_w). Calls go through the dispatcher.
at::Tensor nearest_unpool2d(const at::Tensor& input, at::IntArrayRef scale_factor);
at::Tensor nearest_unpool2d_backward(const at::Tensor& grad_output, at::IntArrayRef scale_factor);
at::Tensor bed_of_nails_unpool2d(const at::Tensor& input, at::IntArrayRef scale_factor);
at::Tensor bed_of_nails_unpool2d_backward(const at::Tensor& grad_output, at::IntArrayRef scale_factor);

// Shared by every backend. Forward: checks input and scale_factor, returns (s_h, s_w).
// Backward: also checks that grad_output's plane is a multiple of the scale.
std::array<int64_t, 2> check_scale_unpool2d_args(const at::Tensor& input, at::IntArrayRef scale_factor,
                                                 const char* input_name);
std::array<int64_t, 2> check_scale_unpool2d_backward_args(const at::Tensor& grad_output,
                                                          at::IntArrayRef scale_factor);

}  // namespace pydetops
