#pragma once
#include <ATen/ATen.h>

#include "common/box_overlap_math.h"

namespace pydetops {

// Calls through the dispatcher (so autograd, CPU/CUDA and fake kernels apply).
at::Tensor box_overlaps(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view mode,
                        bool aligned, double eps);
std::tuple<at::Tensor, at::Tensor> box_overlaps_backward(const at::Tensor& grad, const at::Tensor& boxes1,
                                                         const at::Tensor& boxes2, c10::string_view mode,
                                                         bool aligned, double eps);

// Shared by every backend: argument checks and the mode name.
OverlapMode parse_overlap_mode(c10::string_view mode);
void check_box_overlaps_args(const at::Tensor& boxes1, const at::Tensor& boxes2, bool aligned, double eps);
// float64 stays float64; everything else (float32/16, bfloat16, integers) gives float32.
at::ScalarType box_overlaps_result_type(at::ScalarType boxes_type, bool aligned);
// The type the kernels compute in: float64 for float64 boxes and for int32 /
// int64 boxes (float32 cannot hold their coordinates beyond 2^24; torchvision
// computes those exactly), float32 otherwise. The result is then cast to
// box_overlaps_result_type().
at::ScalarType box_overlaps_compute_type(at::ScalarType boxes_type);

}  // namespace pydetops
