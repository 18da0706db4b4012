// CPU kernel of paste_masks.
//
// The result is written once, row by row: at::parallel_for over (mask, image
// row). A row outside the mask's clipped integer box is zero-filled; a row
// inside is zero left of the box, bilinear samples of the zero-padded mask
// inside it (computed directly from the unpadded mask: taps that fall in the
// padding read 0), zero right of it. Separably: each task keeps the mask's
// rows interpolated to the box's width (M x box width values, not a resized
// mask), and an image row is a blend of two of them.
// Each output element depends only on its own inputs, so the result does not
// depend on the number of threads.
//
// Results of 1 MiB and more are allocated as lazily zeroed memory (see
// cpu/lazy_zeros_cpu.h) and the kernel then writes only the pixels inside the
// boxes: the pages outside them are never touched (no fault, no zeroing, no
// write), which is most of a typical result (benchmarks/NOTES.md, "paste_masks
// without touching the zeros"). The values are the same either way.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/checks.h"
#include "common/paste_keypoints_math.h"
#include "cpu/lazy_zeros_cpu.h"
#include "cpu/parallel_grain.h"
#include "ops/paste_keypoints.h"

namespace pydetops {
namespace {

std::vector<pk::PasteBox> integer_boxes(const at::Tensor& boxes, double scale) {
  const at::Tensor b = boxes.contiguous();
  const int64_t n = b.size(0);
  std::vector<pk::PasteBox> out(static_cast<size_t>(n));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.scalar_type(), "paste_masks_boxes", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* p = b.const_data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) {
      out[i] = pk::expand_and_round_box<scalar_t, opmath_t>(p[4 * i], p[4 * i + 1], p[4 * i + 2], p[4 * i + 3],
                                                            scale);
    }
  });
  return out;
}

template <typename scalar_t>
void paste_masks_kernel(const at::Tensor& masks, const std::vector<pk::PasteBox>& boxes, int64_t H, int64_t W,
                        int64_t padding, bool out_is_zero, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = masks.size(0), MH = masks.size(2), MW = masks.size(3);
  const int64_t PH = MH + 2 * padding, PW = MW + 2 * padding;  // padded mask
  const int64_t sN = masks.stride(0), sH = masks.stride(2), sW = masks.stride(3);
  const scalar_t* m = masks.const_data_ptr<scalar_t>();
  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  const int64_t rows = N * H;
  const int64_t grain = cpu::grain_for_item(std::max<int64_t>(W, 1) * 2);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    // Separable: value(y, x) = wy0 * h(r0, x) + wy1 * h(r1, x), with h(r, x) = wx0 * mask[r][c0] +
    // wx1 * mask[r][c1] the horizontal interpolation of mask row r (0 in the padding): the same
    // products and sums, in the same order, as the 2x2 formula. h is computed once per mask and
    // task for the mask's rows (MH x box width) instead of at every pixel of every image row.
    std::vector<acc_t> hrows, zeros;  // hrows[r * len + (x - xs)]
    int64_t tapped = -1;              // the mask hrows is for
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / H, y = r % H;
      scalar_t* row = o + r * W;
      const pk::PasteBox& b = boxes[n];
      const int64_t xs = std::max<int64_t>(b.x0, 0), xe = std::min<int64_t>(b.x1 + 1, W);
      if (!b.valid || y < b.y0 || y > b.y1 || xs >= xe) {
        if (!out_is_zero) std::fill(row, row + W, scalar_t(0));
        continue;
      }
      if (!out_is_zero) {
        std::fill(row, row + xs, scalar_t(0));
        std::fill(row + xe, row + W, scalar_t(0));
      }
      const int64_t len = xe - xs;
      if (tapped != n) {
        const double sx = static_cast<double>(PW) / static_cast<double>(b.w);  // as linear_tap
        hrows.assign(static_cast<size_t>(MH * len), acc_t(0));
        zeros.assign(static_cast<size_t>(len), acc_t(0));
        for (int64_t x = xs; x < xe; ++x) {
          const pk::LinearTap tx = pk::linear_tap_scaled(x - b.x0, PW, sx);
          const int64_t c0 = tx.i0 - padding, c1 = tx.i1 - padding;
          const bool in0 = c0 >= 0 && c0 < MW, in1 = c1 >= 0 && c1 < MW;
          const acc_t wx0 = static_cast<acc_t>(tx.l0), wx1 = static_cast<acc_t>(tx.l1);
          for (int64_t mr = 0; mr < MH; ++mr) {
            const scalar_t* mrow = m + n * sN + mr * sH;
            const acc_t v0 = in0 ? static_cast<acc_t>(mrow[c0 * sW]) : acc_t(0);
            const acc_t v1 = in1 ? static_cast<acc_t>(mrow[c1 * sW]) : acc_t(0);
            hrows[static_cast<size_t>(mr * len + (x - xs))] = wx0 * v0 + wx1 * v1;
          }
        }
        tapped = n;
      }
      // Rows of the padded mask this image row samples (taps in the padding read 0).
      const pk::LinearTap ty = pk::linear_tap(y - b.y0, PH, b.h);
      const int64_t r0 = ty.i0 - padding, r1 = ty.i1 - padding;
      const acc_t* h0 = (r0 >= 0 && r0 < MH) ? hrows.data() + r0 * len : zeros.data();
      const acc_t* h1 = (r1 >= 0 && r1 < MH) ? hrows.data() + r1 * len : zeros.data();
      const acc_t wy0 = static_cast<acc_t>(ty.l0), wy1 = static_cast<acc_t>(ty.l1);
      scalar_t* out_row = row + xs;
      for (int64_t i = 0; i < len; ++i) out_row[i] = static_cast<scalar_t>(wy0 * h0[i] + wy1 * h1[i]);
    }
  });
}

at::Tensor paste_masks_cpu(const at::Tensor& masks, const at::Tensor& boxes, int64_t image_height,
                           int64_t image_width, int64_t padding) {
  check_paste_masks_args(masks, boxes, image_height, image_width, padding);
  const int64_t N = masks.size(0);
  const std::vector<int64_t> sizes{N, 1, image_height, image_width};
  at::Tensor out = cpu::lazy_zeros_cpu(sizes, masks.dtype());
  const bool out_is_zero = out.defined();
  if (!out_is_zero) out = at::empty(sizes, masks.options());
  if (out.numel() == 0) return out;
  // torchvision's expand_masks: scale = (M + 2 padding) / M with M the mask width.
  const int64_t MW = masks.size(3);
  const double scale = static_cast<double>(MW + 2 * padding) / static_cast<double>(MW);
  const std::vector<pk::PasteBox> ib = integer_boxes(boxes, scale);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, masks.scalar_type(), "paste_masks_cpu", [&] {
    paste_masks_kernel<scalar_t>(masks, ib, image_height, image_width, padding, out_is_zero, out);
  });
  return out;
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CPU, m) {
  m.impl("paste_masks", &pydetops::paste_masks_cpu);
}
