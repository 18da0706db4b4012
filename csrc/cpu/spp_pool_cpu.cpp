// CPU kernels of spp_pool (spatial pyramid max pooling of RoIs) and its backward.
//
// Forward: the bin rectangles of every level of every RoI are laid out once
// (common/roi_pool_bins.h); then tasks are (image, block of channels), each
// pooling every bin of every RoI of its image from a per-thread (H, W, block)
// copy (cpu/roi_max_pool_kernel.h, shared with roi_pool). The argmax
// (h * W + w, -1 for an empty bin) is kept for the backward. Ties keep the
// first maximum in row-major order; a NaN in a bin makes the bin NaN.
// Backward: one work item per (image, channel) plane of grad_input, visiting
// the image's RoIs in order: deterministic for any thread count, no atomics.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "common/checks.h"
#include "common/roi_pool_bins.h"
#include "cpu/roi_groups_cpu.h"
#include "cpu/parallel_grain.h"
#include "cpu/roi_max_pool_kernel.h"
#include "ops/psroi_spp_common.h"
#include "ops/spp_pool.h"

namespace pydetops {
namespace {

using BinRect = cpu::MaxBin;  // [h0, h1) x [w0, w1); empty: h1 <= h0 or w1 <= w0

// rects[k * cells + cell], cells in output order: level by level, row-major in a level.
template <typename acc_t>
std::vector<BinRect> spp_bin_rects(const acc_t* r, int64_t num_rois, acc_t scale, at::IntArrayRef levels,
                                   int64_t cells, int64_t height, int64_t width) {
  std::vector<BinRect> rects(static_cast<size_t>(num_rois * cells));
  at::parallel_for(0, num_rois, 64, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const acc_t* roi = r + 5 * k;
      const RoundedRoi rr = rounded_roi(roi[1], roi[2], roi[3], roi[4], scale, /*end_offset=*/1);
      BinRect* out = rects.data() + k * cells;
      for (const int64_t l : levels) {
        for (int64_t i = 0; i < l; ++i) {
          const BinRange hr = pool_bin_range<acc_t>(rr.y0, rr.height, l, i, height);
          for (int64_t j = 0; j < l; ++j) {
            const BinRange wr = pool_bin_range<acc_t>(rr.x0, rr.width, l, j, width);
            *out++ = rr.valid ? BinRect{hr.start, hr.end, wr.start, wr.end} : BinRect{0, 0, 0, 0};
          }
        }
      }
    }
  });
  return rects;
}

// Tasks are (image, block of channels): the block is copied once into a
// (H, W, block) buffer and every RoI of the image is pooled from it.
template <typename scalar_t, typename acc_t>
void forward_kernel(const at::Tensor& input, const acc_t* r, const std::vector<BinRect>& rects,
                    at::IntArrayRef levels, int64_t cells, at::Tensor& output, at::Tensor& argmax) {
  using V = typename cpu::MaxVec<acc_t>::V;
  using I = typename cpu::MaxVec<acc_t>::I;
  using idx_t = typename cpu::MaxVec<acc_t>::idx_t;
  constexpr int64_t CB = cpu::max_block_channels<acc_t>();
  const scalar_t* in = input.data_ptr<scalar_t>();
  const int64_t sN = input.stride(0), sC = input.stride(1), sH = input.stride(2), sW = input.stride(3);
  const int64_t batch = input.size(0), channels = input.size(1), height = input.size(2), width = input.size(3);
  scalar_t* out = output.data_ptr<scalar_t>();
  int32_t* am = argmax.data_ptr<int32_t>();
  const int64_t num_rois = output.size(0), nb = (channels + CB - 1) / CB;
  const std::vector<int64_t> lv(levels.begin(), levels.end());
  const RoisByImage groups = group_rois_by_image(r, num_rois, batch);
  const cpu::MaxBinsFn<cpu::MaxRule::kFirstNaN, acc_t> pool = cpu::pick_max_bins<cpu::MaxRule::kFirstNaN, acc_t>();
  const double work = static_cast<double>(std::min(batch, num_rois)) * static_cast<double>(height * width) *
                          static_cast<double>(channels) +
                      static_cast<double>(num_rois) * static_cast<double>(cells) * static_cast<double>(channels) * 4.0;
  at::parallel_for(0, batch * nb, cpu::grain_for_total(batch * nb, work), [&](int64_t t_begin, int64_t t_end) {
    cpu::AlignedBuffer<V> blk_buf, mt_buf;
    cpu::AlignedBuffer<I> it_buf;
    const int64_t chunk = std::min<int64_t>(cells, cpu::kMaxBinChunk);
    V* const mt = mt_buf.get(chunk * cpu::kMaxVecs);
    I* const it = it_buf.get(chunk * cpu::kMaxVecs);
    const acc_t* ms = reinterpret_cast<const acc_t*>(mt);
    const idx_t* is = reinterpret_cast<const idx_t*>(it);
    for (int64_t t = t_begin; t < t_end; ++t) {
      const int64_t n = t % batch, c0 = (t / batch) * CB, cbn = std::min(CB, channels - c0);
      if (groups.offset[n] == groups.offset[n + 1]) continue;
      V* const blk = blk_buf.get(height * width * cpu::kMaxVecs);
      cpu::fill_max_block<scalar_t, acc_t>(in + n * sN + c0 * sC, sC, sH, sW, height, width, cbn, blk);
      for (int64_t q = groups.offset[n]; q < groups.offset[n + 1]; ++q) {
        const int64_t k = groups.order[q];
        // Cells in chunks of `chunk`; cell q of the RoI is cell p = q - level_offset of its level.
        int64_t level_offset = 0, li = 0;  // level of the current cell, sum of l*l before it
        for (int64_t q0 = 0; q0 < cells; q0 += chunk) {
          const int64_t n_cells = std::min(chunk, cells - q0);
          pool(blk, width, rects.data() + k * cells + q0, n_cells, mt, it);
          for (int64_t q = q0; q < q0 + n_cells; ++q) {
            while (q >= level_offset + lv[li] * lv[li]) level_offset += lv[li] * lv[li], ++li;
            const int64_t ll = lv[li] * lv[li], p = q - level_offset;
            const int64_t base = k * channels * cells + channels * level_offset + c0 * ll;
            for (int64_t c = 0; c < cbn; ++c) {
              out[base + c * ll + p] = static_cast<scalar_t>(ms[(q - q0) * CB + c]);
              am[base + c * ll + p] = static_cast<int32_t>(is[(q - q0) * CB + c]);
            }
          }
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> spp_pool_cpu(const at::Tensor& input, const at::Tensor& rois,
                                                at::IntArrayRef levels, double spatial_scale) {
  const int64_t cells = check_spp_args(input, rois, levels, spatial_scale);
  const auto acc_type = accumulate_type_of(input.scalar_type());
  const at::Tensor r = rois.to(acc_type).contiguous();
  check_roi_batch_indices(r, input.size(0));
  const int64_t num_rois = rois.size(0), channels = input.size(1);
  at::Tensor output = at::empty({num_rois, channels * cells}, input.options());
  at::Tensor argmax = at::empty({num_rois, channels * cells}, input.options().dtype(at::kInt));
  if (output.numel() == 0) return {output, argmax};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "spp_pool_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* rp = r.data_ptr<acc_t>();
    const std::vector<BinRect> rects =
        spp_bin_rects(rp, num_rois, static_cast<acc_t>(spatial_scale), levels, cells, input.size(2), input.size(3));
    forward_kernel<scalar_t, acc_t>(input, rp, rects, levels, cells, output, argmax);
  });
  return {output, argmax};
}

template <typename acc_t>
void backward_kernel(const acc_t* gr, const int32_t* am, const acc_t* r, int64_t num_rois, at::IntArrayRef levels,
                     int64_t cells, at::Tensor& grad_input) {
  acc_t* gi = grad_input.data_ptr<acc_t>();
  const int64_t batch = grad_input.size(0), channels = grad_input.size(1);
  const int64_t plane_size = grad_input.size(2) * grad_input.size(3);
  const RoisByImage groups = group_rois_by_image(r, num_rois, batch);
  const std::vector<int64_t> lv(levels.begin(), levels.end());
  const int64_t per_item = std::max<int64_t>(1, num_rois / std::max<int64_t>(batch, 1) * cells);
  at::parallel_for(0, batch * channels, std::max<int64_t>(1, 4096 / per_item), [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / channels, c = item % channels;
      acc_t* plane = gi + item * plane_size;
      for (int64_t q = groups.offset[b]; q < groups.offset[b + 1]; ++q) {
        const int64_t k = groups.order[q];
        int64_t level_offset = 0;
        for (const int64_t l : lv) {
          const int64_t base = k * channels * cells + channels * level_offset + c * l * l;
          for (int64_t p = 0; p < l * l; ++p) {
            const int64_t a = am[base + p];
            // Out-of-range entries (only possible in a hand-made argmax) are ignored.
            if (a >= 0 && a < plane_size) plane[a] += gr[base + p];
          }
          level_offset += l * l;
        }
      }
    }
  });
}

at::Tensor spp_pool_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax,
                                 at::IntArrayRef levels, int64_t batch_size, int64_t channels, int64_t height,
                                 int64_t width) {
  TORCH_CHECK_VALUE(batch_size >= 0 && channels >= 0 && height >= 0 && width >= 0,
                    "_spp_pool_backward: the input sizes must be >= 0");
  check_roi_op_rois(rois, grad);
  TORCH_CHECK_VALUE(!levels.empty(), "levels must hold at least one pyramid level");
  int64_t cells = 0;
  for (const int64_t l : levels) {
    TORCH_CHECK_VALUE(l > 0 && l <= 4096, "levels must be positive grid sizes (at most 4096), got ", levels);
    cells += l * l;
  }
  check_roi_op_grad(grad, {rois.size(0), channels * cells}, "_spp_pool_backward");
  TORCH_CHECK_VALUE(argmax.sizes() == grad.sizes() && argmax.scalar_type() == at::kInt,
                    "_spp_pool_backward: argmax must be an int32 tensor shaped like grad, got ", argmax.scalar_type(),
                    " ", argmax.sizes());
  const auto acc_type = accumulate_type_of(grad.scalar_type());
  const at::Tensor r = rois.to(acc_type).contiguous();
  check_roi_batch_indices(r, batch_size);
  at::Tensor grad_input = at::zeros({batch_size, channels, height, width}, grad.options().dtype(acc_type));
  if (grad.numel() > 0 && grad_input.numel() > 0) {
    const at::Tensor gr = grad.to(acc_type).contiguous();
    const at::Tensor am = argmax.contiguous();
    AT_DISPATCH_FLOATING_TYPES(acc_type, "spp_pool_backward_cpu", [&] {
      backward_kernel<scalar_t>(gr.data_ptr<scalar_t>(), am.data_ptr<int32_t>(), r.data_ptr<scalar_t>(),
                                rois.size(0), levels, cells, grad_input);
    });
  }
  return grad_input.to(grad.scalar_type());
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CPU, m) {
  m.impl("spp_pool", &pydetops::spp_pool_cpu);
  m.impl("_spp_pool_backward", &pydetops::spp_pool_backward_cpu);
}
