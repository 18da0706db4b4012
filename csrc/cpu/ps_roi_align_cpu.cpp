// CPU kernels of ps_roi_align and its backward.
//
// Both directions: one work item per (image, bin). The bin's bilinear taps
// (common/ps_roi_align_grid.h, common/bilinear.h) are computed once for every
// RoI of the image, then applied to the bin's input channel of each output
// channel, c_in = (c_out * ph + i) * pw + j, one channel plane at a time so
// that the plane stays in cache. The input is read in place through its
// strides (channels-last and non-contiguous inputs need no copy). In the
// backward an item owns its grad_input planes and visits the RoIs in order:
// the sums are the same for any thread count, without atomics.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "common/bilinear.h"
#include "common/checks.h"
#include "common/ps_roi_align_grid.h"
#include "cpu/roi_groups_cpu.h"
#include "ops/ps_roi_align.h"
#include "ops/psroi_spp_common.h"

namespace pydetops {
namespace {

struct PSAlignGeom {
  int64_t pooled_h, pooled_w, sampling_ratio, height, width;
};

// Fills `taps` with the valid taps of bin (i, j) of the RoI `r` (5 values) and
// returns the sample count g_h * g_w the bin's sum is divided by (0: value 0).
template <typename acc_t>
int64_t bin_taps(const acc_t* r, acc_t scale, int64_t i, int64_t j, const PSAlignGeom& g,
                 std::vector<BilinearTap<acc_t>>& taps) {
  taps.clear();
  const acc_t start_w = r[1] * scale - acc_t(0.5);
  const acc_t start_h = r[2] * scale - acc_t(0.5);
  const acc_t end_w = r[3] * scale - acc_t(0.5);
  const acc_t end_h = r[4] * scale - acc_t(0.5);
  const acc_t bin_h = (end_h - start_h) / static_cast<acc_t>(g.pooled_h);
  const acc_t bin_w = (end_w - start_w) / static_cast<acc_t>(g.pooled_w);
  const int64_t grid_h = ps_align_grid_size(bin_h, g.sampling_ratio);
  const int64_t grid_w = ps_align_grid_size(bin_w, g.sampling_ratio);
  if (grid_h == 0 || grid_w == 0 || g.height == 0 || g.width == 0) return 0;
  const acc_t hstart = static_cast<acc_t>(i) * bin_h + start_h;
  const acc_t wstart = static_cast<acc_t>(j) * bin_w + start_w;
  int64_t y0, y1, x0, x1;
  ps_align_sample_range(hstart, bin_h, grid_h, g.height, &y0, &y1);
  ps_align_sample_range(wstart, bin_w, grid_w, g.width, &x0, &x1);
  for (int64_t iy = y0; iy <= y1; ++iy) {
    const acc_t y = ps_align_sample(hstart, bin_h, grid_h, iy);
    for (int64_t ix = x0; ix <= x1; ++ix) {
      const acc_t x = ps_align_sample(wstart, bin_w, grid_w, ix);
      const BilinearTap<acc_t> t = bilinear_tap(y, x, g.height, g.width);
      if (t.valid) taps.push_back(t);
    }
  }
  return grid_h * grid_w;
}

// The taps of one bin for every RoI of one image, flattened: RoI q's taps are
// taps[span[q] .. span[q + 1]), its sample count count[q] (0: value 0).
template <typename acc_t>
struct ImageBinTaps {
  std::vector<BilinearTap<acc_t>> taps;
  std::vector<int64_t> span;
  std::vector<int64_t> count;
  std::vector<BilinearTap<acc_t>> scratch;

  void build(const acc_t* r, acc_t scale, const RoisByImage& groups, int64_t b, int64_t bin, const PSAlignGeom& g) {
    taps.clear();
    span.assign(1, 0);
    count.clear();
    for (int64_t q = groups.offset[b]; q < groups.offset[b + 1]; ++q) {
      count.push_back(bin_taps(r + 5 * groups.order[q], scale, bin / g.pooled_w, bin % g.pooled_w, g, scratch));
      taps.insert(taps.end(), scratch.begin(), scratch.end());
      span.push_back(static_cast<int64_t>(taps.size()));
    }
  }
};

// One work item per (image, bin): the bin's taps are computed once for all the
// image's RoIs, then applied channel plane by channel plane (each plane is
// read while it is in cache), c_in = c_out * ph * pw + bin.
template <typename scalar_t, typename acc_t>
void forward_kernel(const at::Tensor& input, const at::Tensor& rois, acc_t scale, const PSAlignGeom& g,
                    int64_t channels_out, at::Tensor& output) {
  const scalar_t* in = input.data_ptr<scalar_t>();
  const int64_t sN = input.stride(0), sC = input.stride(1), sH = input.stride(2), sW = input.stride(3);
  const acc_t* r = rois.data_ptr<acc_t>();
  scalar_t* out = output.data_ptr<scalar_t>();
  const int64_t batch = input.size(0);
  const int64_t bins = g.pooled_h * g.pooled_w;
  const RoisByImage groups = group_rois_by_image(r, rois.size(0), batch);
  // Small problems run inline: a parallel region costs more than they do.
  const int64_t per_item = std::max<int64_t>(1, rois.size(0) / std::max<int64_t>(batch, 1) * channels_out);
  at::parallel_for(0, batch * bins, std::max<int64_t>(1, 1024 / per_item), [&](int64_t begin, int64_t end) {
    ImageBinTaps<acc_t> bt;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / bins, bin = item % bins;
      bt.build(r, scale, groups, b, bin, g);
      const int64_t n = groups.offset[b + 1] - groups.offset[b];
      const int64_t* order = groups.order.data() + groups.offset[b];
      for (int64_t c = 0; c < channels_out; ++c) {
        const scalar_t* plane = in + b * sN + (c * bins + bin) * sC;
        for (int64_t q = 0; q < n; ++q) {
          acc_t sum = 0;
          for (int64_t t = bt.span[q]; t < bt.span[q + 1]; ++t) sum += bilinear_value<acc_t>(bt.taps[t], plane, sH, sW);
          const acc_t value = bt.count[q] == 0 ? acc_t(0) : sum / static_cast<acc_t>(bt.count[q]);
          out[(order[q] * channels_out + c) * bins + bin] = static_cast<scalar_t>(value);
        }
      }
    }
  });
}

at::Tensor ps_roi_align_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                            int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio) {
  const int64_t channels_out = check_ps_roi_args(input, rois, spatial_scale, pooled_height, pooled_width);
  check_sampling_ratio(sampling_ratio);
  const auto acc_type = accumulate_type_of(input.scalar_type());
  const at::Tensor r = rois.to(acc_type).contiguous();
  check_roi_batch_indices(r, input.size(0));
  at::Tensor output = at::empty({rois.size(0), channels_out, pooled_height, pooled_width}, input.options());
  if (output.numel() == 0) return output;
  const PSAlignGeom g{pooled_height, pooled_width, sampling_ratio, input.size(2), input.size(3)};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "ps_roi_align_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t, acc_t>(input, r, static_cast<acc_t>(spatial_scale), g, channels_out, output);
  });
  return output;
}

// One work item per (image, bin), owning the grad_input planes of the bin's
// channels; the image's RoIs are visited in their order: deterministic for any
// thread count, no atomics.
template <typename acc_t>
void backward_kernel(const at::Tensor& grad, const at::Tensor& rois, acc_t scale, const PSAlignGeom& g,
                     int64_t channels_out, at::Tensor& grad_input) {
  const acc_t* gr = grad.data_ptr<acc_t>();
  const acc_t* r = rois.data_ptr<acc_t>();
  acc_t* gi = grad_input.data_ptr<acc_t>();
  const int64_t batch = grad_input.size(0), channels = grad_input.size(1);
  const int64_t plane_size = g.height * g.width;
  const int64_t bins = g.pooled_h * g.pooled_w;
  const RoisByImage groups = group_rois_by_image(r, rois.size(0), batch);
  const int64_t per_item = std::max<int64_t>(1, rois.size(0) / std::max<int64_t>(batch, 1) * channels_out);
  at::parallel_for(0, batch * bins, std::max<int64_t>(1, 1024 / per_item), [&](int64_t begin, int64_t end) {
    ImageBinTaps<acc_t> bt;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / bins, bin = item % bins;
      bt.build(r, scale, groups, b, bin, g);
      const int64_t n = groups.offset[b + 1] - groups.offset[b];
      const int64_t* order = groups.order.data() + groups.offset[b];
      for (int64_t c = 0; c < channels_out; ++c) {
        acc_t* plane = gi + (b * channels + c * bins + bin) * plane_size;
        for (int64_t q = 0; q < n; ++q) {
          if (bt.count[q] == 0) continue;
          const acc_t v = gr[(order[q] * channels_out + c) * bins + bin] / static_cast<acc_t>(bt.count[q]);
          for (int64_t t = bt.span[q]; t < bt.span[q + 1]; ++t) {
            const BilinearTap<acc_t>& tap = bt.taps[t];
            plane[tap.y_low * g.width + tap.x_low] += tap.w_ll * v;
            plane[tap.y_low * g.width + tap.x_high] += tap.w_lh * v;
            plane[tap.y_high * g.width + tap.x_low] += tap.w_hl * v;
            plane[tap.y_high * g.width + tap.x_high] += tap.w_hh * v;
          }
        }
      }
    }
  });
}

at::Tensor ps_roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                     int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                                     int64_t batch_size, int64_t channels, int64_t height, int64_t width) {
  const int64_t channels_out = check_ps_roi_backward_args(grad, rois, spatial_scale, pooled_height, pooled_width,
                                                         batch_size, channels, height, width,
                                                         "_ps_roi_align_backward");
  check_sampling_ratio(sampling_ratio);
  const auto acc_type = accumulate_type_of(grad.scalar_type());
  const at::Tensor r = rois.to(acc_type).contiguous();
  check_roi_batch_indices(r, batch_size);
  at::Tensor grad_input = at::zeros({batch_size, channels, height, width}, grad.options().dtype(acc_type));
  if (grad.numel() > 0 && grad_input.numel() > 0) {
    const at::Tensor gr = grad.to(acc_type).contiguous();
    const PSAlignGeom g{pooled_height, pooled_width, sampling_ratio, height, width};
    AT_DISPATCH_FLOATING_TYPES(acc_type, "ps_roi_align_backward_cpu", [&] {
      backward_kernel<scalar_t>(gr, r, static_cast<scalar_t>(spatial_scale), g, channels_out, grad_input);
    });
  }
  return grad_input.to(grad.scalar_type());
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CPU, m) {
  m.impl("ps_roi_align", &pydetops::ps_roi_align_cpu);
  m.impl("_ps_roi_align_backward", &pydetops::ps_roi_align_backward_cpu);
}
