// CPU kernels of multi_level_roi_align and its backward: every RoI pooled from
// its own level in one parallel pass (see cpu/roi_align_kernel.h).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "common/checks.h"
#include "cpu/roi_align_kernel.h"
#include "ops/multi_level_roi_align.h"
#include "ops/roi_align.h"

namespace pydetops {
namespace {

at::Tensor multi_level_roi_align_cpu(at::TensorList features, const at::Tensor& boxes, const at::Tensor& levels,
                                     at::ArrayRef<double> spatial_scales, int64_t pooled_height, int64_t pooled_width,
                                     int64_t sampling_ratio, bool aligned) {
  check_multi_level_args(features, boxes, levels, spatial_scales, pooled_height, pooled_width);
  check_sampling_ratio(sampling_ratio);
  const at::Tensor& f0 = features[0];
  const int64_t K = boxes.size(0), C = f0.size(1);
  at::Tensor out = at::zeros({K, C, pooled_height, pooled_width}, f0.options());
  if (out.numel() == 0) return out;
  const auto acc_type = accumulate_type_of(f0.scalar_type());
  const at::Tensor rois = boxes.to(acc_type).contiguous();
  const at::Tensor lv = levels.contiguous();
  std::vector<at::Tensor> feats(features.begin(), features.end());
  const cpu::AlignParams p{pooled_height, pooled_width, sampling_ratio, aligned};
  std::vector<double> scales(spatial_scales.begin(), spatial_scales.end());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f0.scalar_type(), "multi_level_roi_align_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    cpu::roi_align_forward_kernel<scalar_t, acc_t>(feats, scales, rois.data_ptr<acc_t>(), K, lv.data_ptr<int64_t>(),
                                                   p, out.data_ptr<scalar_t>());
  });
  return out;
}

std::vector<at::Tensor> multi_level_roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& boxes,
                                                           const at::Tensor& levels,
                                                           at::ArrayRef<double> spatial_scales, int64_t pooled_height,
                                                           int64_t pooled_width, int64_t sampling_ratio, bool aligned,
                                                           int64_t batch_size, int64_t channels,
                                                           at::IntArrayRef heights, at::IntArrayRef widths) {
  const int64_t L = static_cast<int64_t>(heights.size());
  TORCH_CHECK_VALUE(L > 0 && widths.size() == heights.size() && spatial_scales.size() == heights.size(),
                    "heights, widths and spatial_scales must have one entry per level, got ", heights.size(), ", ",
                    widths.size(), " and ", spatial_scales.size());
  check_roi_pool_args(1.0, pooled_height, pooled_width);
  check_sampling_ratio(sampling_ratio);
  for (int64_t l = 0; l < L; ++l) {
    TORCH_CHECK_VALUE(heights[l] >= 0 && widths[l] >= 0, "heights and widths must be >= 0");
    TORCH_CHECK_VALUE(std::isfinite(spatial_scales[l]) && spatial_scales[l] > 0,
                      "spatial_scales must be finite numbers > 0, got ", spatial_scales[l]);
  }
  TORCH_CHECK_VALUE(batch_size >= 0 && channels >= 0, "batch_size and channels must be >= 0");
  check_floating(grad, "grad");
  check_roi_boxes(boxes, grad.scalar_type(), grad.device(), batch_size);
  check_roi_grad(grad, boxes, channels, pooled_height, pooled_width);
  TORCH_CHECK_TYPE(levels.scalar_type() == at::kLong, "levels must be an int64 tensor, got ", levels.scalar_type());
  TORCH_CHECK_VALUE(levels.dim() == 1 && levels.size(0) == boxes.size(0), "levels must be a Tensor[K], got shape ",
                    levels.sizes());
  std::vector<at::Tensor> grads;
  bool any = false;
  for (int64_t l = 0; l < L; ++l) {
    grads.push_back(at::empty({batch_size, channels, heights[l], widths[l]}, grad.options()));
    any = any || grads.back().numel() > 0;
  }
  if (!any) return grads;
  const int64_t K = boxes.size(0);
  const auto acc_type = accumulate_type_of(grad.scalar_type());
  const at::Tensor rois = boxes.to(acc_type).contiguous();
  const at::Tensor g = grad.to(acc_type).contiguous();
  const at::Tensor lv = levels.contiguous();
  const cpu::AlignParams p{pooled_height, pooled_width, sampling_ratio, aligned};
  std::vector<double> scales(spatial_scales.begin(), spatial_scales.end());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "multi_level_roi_align_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    cpu::roi_align_backward_kernel<scalar_t, acc_t>(g.data_ptr<acc_t>(), rois.data_ptr<acc_t>(), K,
                                                    lv.data_ptr<int64_t>(), scales, p, batch_size, channels, grads);
  });
  return grads;
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CPU, m) {
  m.impl("multi_level_roi_align", &pydetops::multi_level_roi_align_cpu);
  m.impl("_multi_level_roi_align_backward", &pydetops::multi_level_roi_align_backward_cpu);
}
