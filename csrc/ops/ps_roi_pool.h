#pragma once
#include <ATen/ATen.h>

namespace pydetops {

// Calls through the dispatcher. Checks: check_ps_roi_args (ops/ps_roi_align.h).
at::Tensor ps_roi_pool(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_height,
                       int64_t pooled_width);
at::Tensor ps_roi_pool_backward(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                int64_t pooled_height, int64_t pooled_width, c10::SymInt batch_size,
                                c10::SymInt channels, c10::SymInt height, c10::SymInt width);

}  // namespace pydetops
