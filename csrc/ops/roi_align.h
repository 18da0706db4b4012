#pragma once
#include <ATen/ATen.h>

namespace pydetops {

// Calls through the dispatcher (so autograd, CPU/CUDA and fake kernels apply).
at::Tensor roi_align(const at::Tensor& input, const at::Tensor& boxes, double spatial_scale, int64_t pooled_height,
                     int64_t pooled_width, int64_t sampling_ratio, bool aligned);
at::Tensor roi_align_backward(const at::Tensor& grad, const at::Tensor& boxes, double spatial_scale,
                              int64_t pooled_height, int64_t pooled_width, c10::SymInt batch_size,
                              c10::SymInt channels, c10::SymInt height, c10::SymInt width, int64_t sampling_ratio,
                              bool aligned);

// ---- checks shared by every backend and by roi_pool / multi_level_roi_align ----

// input: a floating Tensor[N, C, H, W].
void check_roi_feature(const at::Tensor& input, const char* name);
// boxes: Tensor[K, 5] (batch index, x1, y1, x2, y2) of `dtype` on `device`;
// on the CPU also that every batch index is an integer in [0, batch_size).
void check_roi_boxes(const at::Tensor& boxes, at::ScalarType dtype, c10::Device device, int64_t batch_size);
void check_roi_pool_args(double spatial_scale, int64_t pooled_height, int64_t pooled_width);
// grad: Tensor[K, C, pooled_height, pooled_width].
void check_roi_grad(const at::Tensor& grad, const at::Tensor& boxes, int64_t channels, int64_t pooled_height,
                    int64_t pooled_width);

void check_roi_align_args(const at::Tensor& input, const at::Tensor& boxes, double spatial_scale,
                          int64_t pooled_height, int64_t pooled_width);

}  // namespace pydetops
