// CPU kernels of roi_align and its backward (see cpu/roi_align_kernel.h).
// The output and grad_input are contiguous (NCHW) whatever the input layout;
// channels-last input is read in place.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "common/checks.h"
#include "cpu/roi_align_kernel.h"
#include "ops/roi_align.h"

namespace pydetops {
namespace {

at::Tensor roi_align_cpu(const at::Tensor& input, const at::Tensor& boxes, double spatial_scale,
                         int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  check_roi_align_args(input, boxes, spatial_scale, pooled_height, pooled_width);
  check_sampling_ratio(sampling_ratio);
  const int64_t K = boxes.size(0), C = input.size(1);
  at::Tensor out = at::zeros({K, C, pooled_height, pooled_width}, input.options());
  if (out.numel() == 0 || input.numel() == 0) return out;
  const auto acc_type = accumulate_type_of(input.scalar_type());
  const at::Tensor rois = boxes.to(acc_type).contiguous();
  const cpu::AlignParams p{pooled_height, pooled_width, sampling_ratio, aligned};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    cpu::roi_align_forward_kernel<scalar_t, acc_t>({input}, {spatial_scale}, rois.data_ptr<acc_t>(), K, nullptr, p,
                                                   out.data_ptr<scalar_t>());
  });
  return out;
}

at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& boxes, double spatial_scale,
                                  int64_t pooled_height, int64_t pooled_width, int64_t batch_size, int64_t channels,
                                  int64_t height, int64_t width, int64_t sampling_ratio, bool aligned) {
  check_roi_pool_args(spatial_scale, pooled_height, pooled_width);
  check_sampling_ratio(sampling_ratio);
  TORCH_CHECK_VALUE(batch_size >= 0 && channels >= 0 && height >= 0 && width >= 0,
                    "the input sizes must be >= 0, got ", batch_size, ", ", channels, ", ", height, ", ", width);
  check_floating(grad, "grad");
  check_roi_boxes(boxes, grad.scalar_type(), grad.device(), batch_size);
  check_roi_grad(grad, boxes, channels, pooled_height, pooled_width);
  at::Tensor gi = at::empty({batch_size, channels, height, width}, grad.options());
  if (gi.numel() == 0) return gi;
  const int64_t K = boxes.size(0);
  const auto acc_type = accumulate_type_of(grad.scalar_type());
  const at::Tensor rois = boxes.to(acc_type).contiguous();
  const at::Tensor g = grad.to(acc_type).contiguous();
  const cpu::AlignParams p{pooled_height, pooled_width, sampling_ratio, aligned};
  std::vector<at::Tensor> grads{gi};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    cpu::roi_align_backward_kernel<scalar_t, acc_t>(g.data_ptr<acc_t>(), rois.data_ptr<acc_t>(), K, nullptr,
                                                    {spatial_scale}, p, batch_size, channels, grads);
  });
  return gi;
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CPU, m) {
  m.impl("roi_align", &pydetops::roi_align_cpu);
  m.impl("_roi_align_backward", &pydetops::roi_align_backward_cpu);
}
