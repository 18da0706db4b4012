// paste_masks and heatmaps_to_keypoints: Mask R-CNN / Keypoint R-CNN
// post-processing (inference only, not differentiable).
#pragma once
#include <ATen/ATen.h>

#include <tuple>

namespace pydetops {

// Calls through the dispatcher (CPU/CUDA and fake kernels apply).
at::Tensor paste_masks(const at::Tensor& masks, const at::Tensor& boxes, int64_t image_height, int64_t image_width,
                       int64_t padding);
std::tuple<at::Tensor, at::Tensor> heatmaps_to_keypoints(const at::Tensor& heatmaps, const at::Tensor& rois);

// Shared by every backend: argument checks (ValueError / TypeError naming the argument).
void check_paste_masks_args(const at::Tensor& masks, const at::Tensor& boxes, int64_t image_height,
                            int64_t image_width, int64_t padding);
void check_heatmaps_to_keypoints_args(const at::Tensor& heatmaps, const at::Tensor& rois);

// The dtype of heatmaps_to_keypoints' outputs: float64 when heatmaps or rois
// are float64, float32 otherwise.
at::ScalarType keypoints_result_dtype(const at::Tensor& heatmaps, const at::Tensor& rois);

}  // namespace pydetops
