#pragma once
#include <ATen/ATen.h>

#include <array>

#include "common/conv_transpose_math.h"

namespace pydetops {

// Calls through the dispatcher (so autograd, CPU/CUDA and fake kernels apply).
at::Tensor conv_transpose2d(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                            at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_padding,
                            int64_t groups, at::IntArrayRef dilation);
// Gradients (input, weight, bias); an entry whose output_mask is false comes back as an empty Tensor[0].
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_transpose2d_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef output_padding, int64_t groups, at::IntArrayRef dilation,
    std::array<bool, 3> output_mask);

// The arguments of one conv_transpose2d call after checking: every pair
// expanded, the output extent computed.
struct ConvTranspose2dShape {
  int64_t batch, c_in, c_out, groups;  // batch is 1 for an unbatched (C, H, W) input
  bool unbatched;
  int64_t h_in, w_in, kh, kw, h_out, w_out;
  int64_t sh, sw, ph, pw, oph, opw, dh, dw;
};

// Shared by every backend: raises ValueError/TypeError naming the argument
// (torch's rules for conv_transpose2d) and returns the checked shape.
ConvTranspose2dShape check_conv_transpose2d_args(const at::Tensor& input, const at::Tensor& weight,
                                                 const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                                 at::IntArrayRef padding, at::IntArrayRef output_padding,
                                                 int64_t groups, at::IntArrayRef dilation);

// The same for the backward, plus grad_output's shape and dtype (those of the forward's output).
ConvTranspose2dShape check_conv_transpose2d_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                                                          const at::Tensor& weight, at::IntArrayRef stride,
                                                          at::IntArrayRef padding, at::IntArrayRef output_padding,
                                                          int64_t groups, at::IntArrayRef dilation);

}  // namespace pydetops
