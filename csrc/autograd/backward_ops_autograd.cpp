// Autograd kernels of the `_*_backward` ops: they compute the first
// derivative below autograd and make a second derivative raise a clear error
// (see double_backward.h). The IoU family's backward is not listed here for
// create_graph: BoxOverlapsFunction (box_overlaps_autograd.cpp) differentiates a
// composite formula instead, so its second derivatives are real; a direct call
// of _box_overlaps_backward under create_graph raises like the others.
// conv_transpose2d's backward op keeps torch's autograd fallback (its kernel
// nests parallel GEMMs): ConvTranspose2dFunction ties its gradients to the
// raising node itself (conv_transpose2d_autograd.cpp).
#include <torch/autograd.h>
#include <torch/library.h>

#include "autograd/double_backward.h"
#include "ops/box_overlaps.h"
#include "ops/decode_boxes.h"
#include "ops/encode_boxes.h"
#include "ops/max_unpool2d.h"
#include "ops/multi_level_roi_align.h"
#include "ops/ps_roi_align.h"
#include "ops/ps_roi_pool.h"
#include "ops/roi_align.h"
#include "ops/roi_pool.h"
#include "ops/scale_unpool2d.h"
#include "ops/spp_pool.h"

namespace pydetops {
namespace {

using Below = at::AutoDispatchBelowADInplaceOrView;

at::Tensor one(const char* op, const at::Tensor& grad, at::Tensor r) {
  return guard_double_backward(op, grad, {std::move(r)})[0];
}

at::Tensor roi_align_backward_ad(const at::Tensor& grad, const at::Tensor& boxes, double spatial_scale, int64_t ph,
                                 int64_t pw, c10::SymInt n, c10::SymInt c, c10::SymInt h, c10::SymInt w,
                                 int64_t sampling_ratio, bool aligned) {
  at::Tensor r;
  {
    Below g;
    r = roi_align_backward(grad, boxes, spatial_scale, ph, pw, std::move(n), std::move(c), std::move(h), std::move(w),
                           sampling_ratio, aligned);
  }
  return one("roi_align", grad, std::move(r));
}

at::Tensor roi_pool_backward_ad(const at::Tensor& grad, const at::Tensor& boxes, const at::Tensor& argmax,
                                double spatial_scale, int64_t ph, int64_t pw, c10::SymInt n, c10::SymInt c,
                                c10::SymInt h, c10::SymInt w) {
  at::Tensor r;
  {
    Below g;
    r = roi_pool_backward(grad, boxes, argmax, spatial_scale, ph, pw, std::move(n), std::move(c), std::move(h),
                          std::move(w));
  }
  return one("roi_pool", grad, std::move(r));
}

at::Tensor ps_roi_align_backward_ad(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale, int64_t ph,
                                    int64_t pw, int64_t sampling_ratio, c10::SymInt n, c10::SymInt c, c10::SymInt h,
                                    c10::SymInt w) {
  at::Tensor r;
  {
    Below g;
    r = ps_roi_align_backward(grad, rois, spatial_scale, ph, pw, sampling_ratio, std::move(n), std::move(c),
                              std::move(h), std::move(w));
  }
  return one("ps_roi_align", grad, std::move(r));
}

at::Tensor ps_roi_pool_backward_ad(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale, int64_t ph,
                                   int64_t pw, c10::SymInt n, c10::SymInt c, c10::SymInt h, c10::SymInt w) {
  at::Tensor r;
  {
    Below g;
    r = ps_roi_pool_backward(grad, rois, spatial_scale, ph, pw, std::move(n), std::move(c), std::move(h),
                             std::move(w));
  }
  return one("ps_roi_pool", grad, std::move(r));
}

at::Tensor spp_pool_backward_ad(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax,
                                at::IntArrayRef levels, c10::SymInt n, c10::SymInt c, c10::SymInt h, c10::SymInt w) {
  at::Tensor r;
  {
    Below g;
    r = spp_pool_backward(grad, rois, argmax, levels, std::move(n), std::move(c), std::move(h), std::move(w));
  }
  return one("spp_pool", grad, std::move(r));
}

std::vector<at::Tensor> multi_level_roi_align_backward_ad(const at::Tensor& grad, const at::Tensor& boxes,
                                                          const at::Tensor& levels,
                                                          at::ArrayRef<double> spatial_scales, int64_t ph, int64_t pw,
                                                          int64_t sampling_ratio, bool aligned, c10::SymInt n,
                                                          c10::SymInt c, c10::SymIntArrayRef heights,
                                                          c10::SymIntArrayRef widths) {
  std::vector<at::Tensor> r;
  {
    Below g;
    r = multi_level_roi_align_backward(grad, boxes, levels, spatial_scales, ph, pw, sampling_ratio, aligned,
                                       std::move(n), std::move(c), heights, widths);
  }
  return guard_double_backward("multi_level_roi_align", grad, std::move(r));
}

at::Tensor nearest_unpool2d_backward_ad(const at::Tensor& grad_output, at::IntArrayRef scale_factor) {
  at::Tensor r;
  {
    Below g;
    r = nearest_unpool2d_backward(grad_output, scale_factor);
  }
  return one("nearest_unpool2d", grad_output, std::move(r));
}

at::Tensor bed_of_nails_unpool2d_backward_ad(const at::Tensor& grad_output, at::IntArrayRef scale_factor) {
  at::Tensor r;
  {
    Below g;
    r = bed_of_nails_unpool2d_backward(grad_output, scale_factor);
  }
  return one("bed_of_nails_unpool2d", grad_output, std::move(r));
}

at::Tensor max_unpool2d_backward_ad(const at::Tensor& grad_output, const at::Tensor& indices) {
  at::Tensor r;
  {
    Below g;
    r = max_unpool2d_backward(grad_output, indices);
  }
  return one("max_unpool2d", grad_output, std::move(r));
}

std::tuple<at::Tensor, at::Tensor> box_overlaps_backward_ad(const at::Tensor& grad, const at::Tensor& boxes1,
                                                            const at::Tensor& boxes2, c10::string_view mode,
                                                            bool aligned, double eps) {
  std::tuple<at::Tensor, at::Tensor> r;
  {
    Below g;
    r = box_overlaps_backward(grad, boxes1, boxes2, mode, aligned, eps);
  }
  const at::Tensor& any = grad.requires_grad() ? grad : (boxes1.requires_grad() ? boxes1 : boxes2);
  auto v = guard_double_backward("_box_overlaps_backward (call box_overlaps' backward instead)", any,
                                 {std::get<0>(r), std::get<1>(r)});
  return {v[0], v[1]};
}

std::tuple<at::Tensor, at::Tensor> encode_boxes_backward_ad(const at::Tensor& grad, const at::Tensor& reference_boxes,
                                                            const at::Tensor& proposals, const at::Tensor& weights) {
  std::tuple<at::Tensor, at::Tensor> r;
  {
    Below g;
    r = encode_boxes_backward(grad, reference_boxes, proposals, weights);
  }
  auto v = guard_double_backward("encode_boxes", grad, {std::get<0>(r), std::get<1>(r)});
  return {v[0], v[1]};
}

std::tuple<at::Tensor, at::Tensor> decode_boxes_backward_ad(const at::Tensor& grad, const at::Tensor& rel_codes,
                                                            const at::Tensor& boxes, at::ArrayRef<double> weights,
                                                            double clamp, at::OptionalIntArrayRef image_size) {
  std::tuple<at::Tensor, at::Tensor> r;
  {
    Below g;
    r = decode_boxes_backward(grad, rel_codes, boxes, weights, clamp, image_size);
  }
  auto v = guard_double_backward("decode_boxes", grad, {std::get<0>(r), std::get<1>(r)});
  return {v[0], v[1]};
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, Autograd, m) {
  m.impl("_roi_align_backward", &pydetops::roi_align_backward_ad);
  m.impl("_roi_pool_backward", &pydetops::roi_pool_backward_ad);
  m.impl("_ps_roi_align_backward", &pydetops::ps_roi_align_backward_ad);
  m.impl("_ps_roi_pool_backward", &pydetops::ps_roi_pool_backward_ad);
  m.impl("_spp_pool_backward", &pydetops::spp_pool_backward_ad);
  m.impl("_multi_level_roi_align_backward", &pydetops::multi_level_roi_align_backward_ad);
  m.impl("_nearest_unpool2d_backward", &pydetops::nearest_unpool2d_backward_ad);
  m.impl("_bed_of_nails_unpool2d_backward", &pydetops::bed_of_nails_unpool2d_backward_ad);
  m.impl("_max_unpool2d_backward", &pydetops::max_unpool2d_backward_ad);
  m.impl("_box_overlaps_backward", &pydetops::box_overlaps_backward_ad);
  m.impl("_encode_boxes_backward", &pydetops::encode_boxes_backward_ad);
  m.impl("_decode_boxes_backward", &pydetops::decode_boxes_backward_ad);
}
