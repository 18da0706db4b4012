#pragma once
#include <ATen/ATen.h>

namespace pydetops {

// Calls through the dispatcher. roi_pool returns (output, argmax): argmax
// (int32 as in torchvision, same shape) is the flat index h * W + w of each
// bin's maximum in its channel plane, or -1 for an empty bin; the backward
// routes grad through it. H * W must therefore fit in int32.
std::tuple<at::Tensor, at::Tensor> roi_pool(const at::Tensor& input, const at::Tensor& boxes, double spatial_scale,
                                            int64_t pooled_height, int64_t pooled_width);
at::Tensor roi_pool_backward(const at::Tensor& grad, const at::Tensor& boxes, const at::Tensor& argmax,
                             double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                             c10::SymInt batch_size, c10::SymInt channels, c10::SymInt height, c10::SymInt width);

// Shared by every backend's forward: check_roi_align_args plus H * W < 2^31.
void check_roi_pool_forward_args(const at::Tensor& input, const at::Tensor& boxes, double spatial_scale,
                                 int64_t pooled_height, int64_t pooled_width);
void check_roi_pool_backward_args(const at::Tensor& grad, const at::Tensor& boxes, const at::Tensor& argmax,
                                  double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                                  int64_t batch_size, int64_t channels, int64_t height, int64_t width);

}  // namespace pydetops
