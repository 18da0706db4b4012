#pragma once
#include <ATen/ATen.h>

namespace pydetops {

// Calls through the dispatcher (so autograd, CPU/CUDA and fake kernels apply).
at::Tensor ps_roi_align(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_height,
                        int64_t pooled_width, int64_t sampling_ratio);
at::Tensor ps_roi_align_backward(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                 int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                                 c10::SymInt batch_size, c10::SymInt channels, c10::SymInt height, c10::SymInt width);

// Shared by every backend of ps_roi_align and ps_roi_pool; return the number of
// output channels C / (ph * pw).
int64_t check_ps_roi_args(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                          int64_t pooled_height, int64_t pooled_width);
// The backward ops: grad [K, C / (ph * pw), ph, pw] and the input's sizes.
int64_t check_ps_roi_backward_args(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                   int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                   int64_t channels, int64_t height, int64_t width, const char* op);

}  // namespace pydetops
