#pragma once
#include <ATen/ATen.h>

#include <array>

#include "common/conv_transpose_math.h"

namespace pydetops {

// Calls through the dispatcher (so autograd, CPU/CUDA and fake kernels apply).
at::Tensor max_unpool2d(const at::Tensor& input, const at::Tensor& indices, at::IntArrayRef kernel_size,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::OptionalIntArrayRef output_size);
at::Tensor max_unpool2d_backward(const at::Tensor& grad_output, const at::Tensor& indices);

// Shared by every backend: checks input/indices/kernel_size/stride/padding/
// output_size (torch's rules, ValueError/TypeError naming the argument) and
// returns the output plane (H_out, W_out).
std::array<int64_t, 2> check_max_unpool2d_args(const at::Tensor& input, const at::Tensor& indices,
                                               at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                               at::IntArrayRef padding, at::OptionalIntArrayRef output_size);
void check_max_unpool2d_backward_args(const at::Tensor& grad_output, const at::Tensor& indices);

}  // namespace pydetops
