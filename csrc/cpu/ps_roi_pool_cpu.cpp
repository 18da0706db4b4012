// CPU kernels of ps_roi_pool (position-sensitive average pooling) and its backward.
//
// Both directions: one work item per (image, bin). The bin's cell ranges
// (common/roi_pool_bins.h) are laid out once for every RoI of the image, then
// each output channel's input plane c_in = c_out * ph * pw + bin is visited in
// turn (it stays in cache). The input is read in place through its strides.
// In the backward an item owns its grad_input planes and visits the RoIs in
// order: deterministic for any thread count without atomics.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "common/checks.h"
#include "common/roi_pool_bins.h"
#include "cpu/roi_groups_cpu.h"
#include "ops/ps_roi_align.h"
#include "ops/ps_roi_pool.h"
#include "ops/psroi_spp_common.h"

namespace pydetops {
namespace {

struct Rect {
  BinRange h, w;
  bool empty() const { return h.empty() || w.empty(); }
};

template <typename acc_t>
Rect bin_rect(const acc_t* r, acc_t scale, int64_t i, int64_t j, int64_t ph, int64_t pw, int64_t height,
              int64_t width) {
  const RoundedRoi rr = rounded_roi(r[1], r[2], r[3], r[4], scale, /*end_offset=*/0);
  if (!rr.valid) return Rect{BinRange{0, 0}, BinRange{0, 0}};
  return Rect{pool_bin_range<acc_t>(rr.y0, rr.height, ph, i, ps_roi_pool_limit(height)),
              pool_bin_range<acc_t>(rr.x0, rr.width, pw, j, ps_roi_pool_limit(width))};
}

// The cell rectangles of one bin for every RoI of one image, in RoI order.
template <typename acc_t>
void image_bin_rects(const acc_t* r, acc_t scale, const RoisByImage& groups, int64_t b, int64_t bin, int64_t ph,
                     int64_t pw, int64_t height, int64_t width, std::vector<Rect>& rects) {
  rects.clear();
  for (int64_t q = groups.offset[b]; q < groups.offset[b + 1]; ++q)
    rects.push_back(bin_rect(r + 5 * groups.order[q], scale, bin / pw, bin % pw, ph, pw, height, width));
}

template <typename scalar_t, typename acc_t>
void forward_kernel(const at::Tensor& input, const at::Tensor& rois, acc_t scale, int64_t ph, int64_t pw,
                    int64_t channels_out, at::Tensor& output) {
  const scalar_t* in = input.data_ptr<scalar_t>();
  const int64_t sN = input.stride(0), sC = input.stride(1), sH = input.stride(2), sW = input.stride(3);
  const int64_t batch = input.size(0), height = input.size(2), width = input.size(3);
  const acc_t* r = rois.data_ptr<acc_t>();
  scalar_t* out = output.data_ptr<scalar_t>();
  const int64_t bins = ph * pw;
  const RoisByImage groups = group_rois_by_image(r, rois.size(0), batch);
  // Small problems run inline: a parallel region costs more than they do.
  const int64_t per_item = std::max<int64_t>(1, rois.size(0) / std::max<int64_t>(batch, 1) * channels_out);
  at::parallel_for(0, batch * bins, std::max<int64_t>(1, 1024 / per_item), [&](int64_t begin, int64_t end) {
    std::vector<Rect> rects;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / bins, bin = item % bins;
      image_bin_rects(r, scale, groups, b, bin, ph, pw, height, width, rects);
      const int64_t* order = groups.order.data() + groups.offset[b];
      for (int64_t c = 0; c < channels_out; ++c) {
        const scalar_t* plane = in + b * sN + (c * bins + bin) * sC;
        for (size_t q = 0; q < rects.size(); ++q) {
          const Rect& rect = rects[q];
          acc_t value = 0;
          if (!rect.empty()) {
            for (int64_t h = rect.h.start; h < rect.h.end; ++h)
              for (int64_t w = rect.w.start; w < rect.w.end; ++w) value += static_cast<acc_t>(plane[h * sH + w * sW]);
            value /= static_cast<acc_t>((rect.h.end - rect.h.start) * (rect.w.end - rect.w.start));
          }
          out[(order[q] * channels_out + c) * bins + bin] = static_cast<scalar_t>(value);
        }
      }
    }
  });
}

at::Tensor ps_roi_pool_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                           int64_t pooled_height, int64_t pooled_width) {
  const int64_t channels_out = check_ps_roi_args(input, rois, spatial_scale, pooled_height, pooled_width);
  const auto acc_type = accumulate_type_of(input.scalar_type());
  const at::Tensor r = rois.to(acc_type).contiguous();
  check_roi_batch_indices(r, input.size(0));
  at::Tensor output = at::empty({rois.size(0), channels_out, pooled_height, pooled_width}, input.options());
  if (output.numel() == 0) return output;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "ps_roi_pool_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t, acc_t>(input, r, static_cast<acc_t>(spatial_scale), pooled_height, pooled_width,
                                    channels_out, output);
  });
  return output;
}

template <typename acc_t>
void backward_kernel(const at::Tensor& grad, const at::Tensor& rois, acc_t scale, int64_t ph, int64_t pw,
                     int64_t channels_out, at::Tensor& grad_input) {
  const acc_t* gr = grad.data_ptr<acc_t>();
  const acc_t* r = rois.data_ptr<acc_t>();
  acc_t* gi = grad_input.data_ptr<acc_t>();
  const int64_t batch = grad_input.size(0), channels = grad_input.size(1);
  const int64_t height = grad_input.size(2), width = grad_input.size(3);
  const int64_t plane_size = height * width;
  const int64_t bins = ph * pw;
  const RoisByImage groups = group_rois_by_image(r, rois.size(0), batch);
  const int64_t per_item = std::max<int64_t>(1, rois.size(0) / std::max<int64_t>(batch, 1) * channels_out);
  at::parallel_for(0, batch * bins, std::max<int64_t>(1, 1024 / per_item), [&](int64_t begin, int64_t end) {
    std::vector<Rect> rects;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / bins, bin = item % bins;
      image_bin_rects(r, scale, groups, b, bin, ph, pw, height, width, rects);
      const int64_t* order = groups.order.data() + groups.offset[b];
      for (int64_t c = 0; c < channels_out; ++c) {
        acc_t* plane = gi + (b * channels + c * bins + bin) * plane_size;
        for (size_t q = 0; q < rects.size(); ++q) {
          const Rect& rect = rects[q];
          if (rect.empty()) continue;
          const acc_t area = static_cast<acc_t>((rect.h.end - rect.h.start) * (rect.w.end - rect.w.start));
          const acc_t v = gr[(order[q] * channels_out + c) * bins + bin] / area;
          for (int64_t h = rect.h.start; h < rect.h.end; ++h)
            for (int64_t w = rect.w.start; w < rect.w.end; ++w) plane[h * width + w] += v;
        }
      }
    }
  });
}

at::Tensor ps_roi_pool_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                    int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                    int64_t channels, int64_t height, int64_t width) {
  const int64_t channels_out = check_ps_roi_backward_args(grad, rois, spatial_scale, pooled_height, pooled_width,
                                                         batch_size, channels, height, width,
                                                         "_ps_roi_pool_backward");
  const auto acc_type = accumulate_type_of(grad.scalar_type());
  const at::Tensor r = rois.to(acc_type).contiguous();
  check_roi_batch_indices(r, batch_size);
  at::Tensor grad_input = at::zeros({batch_size, channels, height, width}, grad.options().dtype(acc_type));
  if (grad.numel() > 0 && grad_input.numel() > 0) {
    const at::Tensor gr = grad.to(acc_type).contiguous();
    AT_DISPATCH_FLOATING_TYPES(acc_type, "ps_roi_pool_backward_cpu", [&] {
      backward_kernel<scalar_t>(gr, r, static_cast<scalar_t>(spatial_scale), pooled_height, pooled_width,
                                channels_out, grad_input);
    });
  }
  return grad_input.to(grad.scalar_type());
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CPU, m) {
  m.impl("ps_roi_pool", &pydetops::ps_roi_pool_cpu);
  m.impl("_ps_roi_pool_backward", &pydetops::ps_roi_pool_backward_cpu);
}
