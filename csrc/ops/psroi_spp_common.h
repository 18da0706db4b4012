// Argument checks shared by every backend of ps_roi_align, ps_roi_pool and
// spp_pool. They raise ValueError / TypeError naming the Python argument
// (input, boxes, output_size, spatial_scale, levels).
#pragma once
#include <ATen/ATen.h>

namespace pydetops {

// input: Tensor[N, C, H, W] of float16 / bfloat16 / float32 / float64.
void check_roi_op_input(const at::Tensor& input);
// rois (the Python "boxes"): floating Tensor[K, 5] on input's device.
void check_roi_op_rois(const at::Tensor& rois, const at::Tensor& input);
void check_roi_op_spatial_scale(double spatial_scale);
// Batch indices rois[:, 0] must be finite and, truncated toward zero as
// torchvision's kernels do, in [0, batch_size). Reads the data (a sync on CUDA).
void check_roi_batch_indices(const at::Tensor& rois, int64_t batch_size);
// grad of a backward op: shape `expected`.
void check_roi_op_grad(const at::Tensor& grad, at::IntArrayRef expected, const char* op);

}  // namespace pydetops
