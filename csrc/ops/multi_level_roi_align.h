#pragma once
#include <ATen/ATen.h>

namespace pydetops {

// Calls through the dispatcher.
at::Tensor multi_level_roi_align(at::TensorList features, const at::Tensor& boxes, const at::Tensor& levels,
                                 at::ArrayRef<double> spatial_scales, int64_t pooled_height, int64_t pooled_width,
                                 int64_t sampling_ratio, bool aligned);
std::vector<at::Tensor> multi_level_roi_align_backward(const at::Tensor& grad, const at::Tensor& boxes,
                                                       const at::Tensor& levels, at::ArrayRef<double> spatial_scales,
                                                       int64_t pooled_height, int64_t pooled_width,
                                                       int64_t sampling_ratio, bool aligned, c10::SymInt batch_size,
                                                       c10::SymInt channels, c10::SymIntArrayRef heights,
                                                       c10::SymIntArrayRef widths);

void check_multi_level_args(at::TensorList features, const at::Tensor& boxes, const at::Tensor& levels,
                            at::ArrayRef<double> spatial_scales, int64_t pooled_height, int64_t pooled_width);

}  // namespace pydetops
