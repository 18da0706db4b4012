#pragma once
#include <ATen/ATen.h>

#include "common/nms_math.h"

namespace pydetops {

// Calls through the dispatcher (CPU/CUDA and fake kernels apply).
at::Tensor nms(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold);
at::Tensor batched_nms(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                       double iou_threshold);
std::tuple<at::Tensor, at::Tensor> soft_nms(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold,
                                            double sigma, double score_threshold, c10::string_view method);

// Shared by every backend: argument checks (ValueError / TypeError naming the argument).
void check_nms_args(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold);
void check_batched_nms_args(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                            double iou_threshold);
SoftNmsMethod parse_soft_nms_method(c10::string_view method);
void check_soft_nms_args(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold, double sigma,
                         double score_threshold, c10::string_view method);

}  // namespace pydetops
