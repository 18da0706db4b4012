#pragma once
#include <ATen/ATen.h>

namespace pydetops {

// Calls through the dispatcher. Returns (boxes [B, max_det, 4], scores [B, max_det],
// labels [B, max_det] int64, counts [B] int64).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> detection_postprocess(
    const at::Tensor& scores, const at::Tensor& codes, const at::Tensor& anchors, at::IntArrayRef level_sizes,
    at::IntArrayRef image_sizes, double score_thresh, int64_t topk_per_level, double nms_thresh, int64_t max_det,
    at::ArrayRef<double> weights, double bbox_xform_clip, double min_size, bool nms_by_level,
    int64_t topk_per_class = -1);

// Shared by every backend: argument checks (ValueError / TypeError naming the argument).
void check_detection_postprocess_args(const at::Tensor& scores, const at::Tensor& codes, const at::Tensor& anchors,
                                      at::IntArrayRef level_sizes, at::IntArrayRef image_sizes, double score_thresh,
                                      int64_t topk_per_level, double nms_thresh, int64_t max_det,
                                      at::ArrayRef<double> weights, double bbox_xform_clip, double min_size,
                                      int64_t topk_per_class);

// The level sizes to use: level_sizes, or one level of all anchors when it is empty.
std::vector<int64_t> detection_level_sizes(const at::Tensor& scores, at::IntArrayRef level_sizes);

}  // namespace pydetops
