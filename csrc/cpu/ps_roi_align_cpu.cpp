// CPU kernels of ps_roi_align and its backward.
//
// Forward: one work item per (RoI, bin): the bin's bilinear taps are computed
// once (common/ps_roi_align_grid.h, common/bilinear.h) and applied to the
// bin's input channel of every output channel, c_in = (c_out * ph + i) * pw + j.
// The input is read in place through its strides (channels-last and
// non-contiguous inputs need no copy).
// Backward: one work item per (image, bin), owning the grad_input planes of
// that bin's channels; it visits the image's RoIs in their order, so the sums
// are the same for any thread count, without atomics.
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

template <typename scalar_t, typename acc_t>
void forward_kernel(const at::Tensor& input, const at::Tensor& rois, acc_t scale, const PSAlignGeom& g,
                    int64_t channels_out, at::Tensor& output) {
  const scalar_t* in = input.data_ptr<scalar_t>();
  const int64_t sN = input.stride(0), sC = input.stride(1), sH = input.stride(2), sW = input.stride(3);
  const acc_t* r = rois.data_ptr<acc_t>();
  scalar_t* out = output.data_ptr<scalar_t>();
  const int64_t bins = g.pooled_h * g.pooled_w;
  const int64_t items = rois.size(0) * bins;
  // Small problems run inline: a parallel region costs more than they do.
  const int64_t grain = std::max<int64_t>(1, 1024 / std::max<int64_t>(channels_out, 1));
  at::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) {
    std::vector<BilinearTap<acc_t>> taps;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t k = item / bins, bin = item % bins;
      const acc_t* roi = r + 5 * k;
      const int64_t count = bin_taps(roi, scale, bin / g.pooled_w, bin % g.pooled_w, g, taps);
      scalar_t* o = out + k * channels_out * bins + bin;
      if (count == 0) {
        for (int64_t c = 0; c < channels_out; ++c) o[c * bins] = scalar_t(0);
        continue;
      }
      const acc_t denom = static_cast<acc_t>(count);
      const scalar_t* image = in + static_cast<int64_t>(roi[0]) * sN;
      for (int64_t c = 0; c < channels_out; ++c) {
        const scalar_t* plane = image + (c * bins + bin) * sC;
        acc_t sum = 0;
        for (const auto& t : taps) sum += bilinear_value<acc_t>(t, plane, sH, sW);
        o[c * bins] = static_cast<scalar_t>(sum / denom);
      }
    }
  });
}

at::Tensor ps_roi_align_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                            int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio) {
  const int64_t channels_out = check_ps_roi_args(input, rois, spatial_scale, pooled_height, pooled_width);
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
    std::vector<BilinearTap<acc_t>> taps;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / bins, bin = item % bins;
      acc_t* image = gi + b * channels * plane_size;
      for (int64_t q = groups.offset[b]; q < groups.offset[b + 1]; ++q) {
        const int64_t k = groups.order[q];
        const int64_t count = bin_taps(r + 5 * k, scale, bin / g.pooled_w, bin % g.pooled_w, g, taps);
        if (count == 0 || taps.empty()) continue;
        const acc_t denom = static_cast<acc_t>(count);
        const acc_t* go = gr + k * channels_out * bins + bin;
        for (int64_t c = 0; c < channels_out; ++c) {
          const acc_t v = go[c * bins] / denom;
          acc_t* plane = image + (c * bins + bin) * plane_size;
          for (const auto& t : taps) {
            plane[t.y_low * g.width + t.x_low] += t.w_ll * v;
            plane[t.y_low * g.width + t.x_high] += t.w_lh * v;
            plane[t.y_high * g.width + t.x_low] += t.w_hl * v;
            plane[t.y_high * g.width + t.x_high] += t.w_hh * v;
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
