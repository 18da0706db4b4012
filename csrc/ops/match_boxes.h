#pragma once
#include <ATen/ATen.h>

namespace pydetops {

// torchvision's Matcher codes for anchors that match no ground truth.
constexpr int64_t kBelowLowThreshold = -1;
constexpr int64_t kBetweenThresholds = -2;

// Calls through the dispatcher (CPU/CUDA and fake kernels apply).
std::tuple<at::Tensor, at::Tensor> match_boxes(const at::Tensor& anchors, const at::Tensor& gt_boxes,
                                               double high_threshold, double low_threshold,
                                               bool allow_low_quality_matches);

// Shared by every backend: argument checks (ValueError / TypeError naming the argument).
void check_match_boxes_args(const at::Tensor& anchors, const at::Tensor& gt_boxes, double high_threshold,
                            double low_threshold);

}  // namespace pydetops
