// Math shared by the CPU and CUDA kernels of paste_masks and
// heatmaps_to_keypoints (the Mask R-CNN / Keypoint R-CNN post-processing
// steps of torchvision.models.detection.roi_heads).
//
// paste_masks: the box of each mask is expanded by (M + 2 padding) / M about
// its centre, in the boxes' own dtype, one rounding per operation (as
// torchvision's expand_boxes does with tensor ops), then truncated to integers
// (a cast to int64). The padded mask is resampled bilinearly
// (align_corners=False, i.e. F.interpolate's "bilinear" with an explicit
// output size: scale = in / out, source = max(scale * (dst + 0.5) - 0.5, 0))
// to the integer box size and pasted clipped to the image.
//
// heatmaps_to_keypoints: each heatmap is resampled bicubically (A = -0.75,
// align_corners=False, source indices clamped to the map; F.interpolate's
// "bicubic") to ceil(max(roi side, 1)) pixels per side.
#pragma once
#include <cmath>
#include <cstdint>

#include "common/macros.h"

namespace pydetops {
namespace pk {

// Coordinates whose magnitude reaches this are treated as invalid (the mask
// is left all zero): int64 sums of two such values cannot overflow.
constexpr double kMaxPasteCoordinate = 4611686018427387904.0;  // 2^62

// Integer box of one mask: rows [y0, y1] and columns [x0, x1] (inclusive) of
// the resampled mask, and its size h x w (at least 1 x 1). valid is false for
// a box with a non-finite or out-of-range expanded coordinate.
struct PasteBox {
  int64_t x0, y0, x1, y1;
  int64_t w, h;
  bool valid;
};

// `scalar_t` is the boxes' dtype, `opmath_t` what one operation on it is
// computed in (float for float16/bfloat16/float32, double for float64); every
// intermediate is rounded back to scalar_t, as separate tensor ops would.
template <typename scalar_t, typename opmath_t>
PYDETOPS_HOST_DEVICE inline PasteBox expand_and_round_box(scalar_t bx1, scalar_t by1, scalar_t bx2, scalar_t by2,
                                                          double scale) {
  const opmath_t half = opmath_t(0.5);
  const opmath_t s = static_cast<opmath_t>(scale);
  scalar_t w_half = static_cast<scalar_t>(
      static_cast<opmath_t>(static_cast<scalar_t>(static_cast<opmath_t>(bx2) - static_cast<opmath_t>(bx1))) * half);
  scalar_t h_half = static_cast<scalar_t>(
      static_cast<opmath_t>(static_cast<scalar_t>(static_cast<opmath_t>(by2) - static_cast<opmath_t>(by1))) * half);
  const scalar_t x_c = static_cast<scalar_t>(
      static_cast<opmath_t>(static_cast<scalar_t>(static_cast<opmath_t>(bx2) + static_cast<opmath_t>(bx1))) * half);
  const scalar_t y_c = static_cast<scalar_t>(
      static_cast<opmath_t>(static_cast<scalar_t>(static_cast<opmath_t>(by2) + static_cast<opmath_t>(by1))) * half);
  w_half = static_cast<scalar_t>(static_cast<opmath_t>(w_half) * s);
  h_half = static_cast<scalar_t>(static_cast<opmath_t>(h_half) * s);
  const double e[4] = {
      static_cast<double>(static_cast<scalar_t>(static_cast<opmath_t>(x_c) - static_cast<opmath_t>(w_half))),
      static_cast<double>(static_cast<scalar_t>(static_cast<opmath_t>(y_c) - static_cast<opmath_t>(h_half))),
      static_cast<double>(static_cast<scalar_t>(static_cast<opmath_t>(x_c) + static_cast<opmath_t>(w_half))),
      static_cast<double>(static_cast<scalar_t>(static_cast<opmath_t>(y_c) + static_cast<opmath_t>(h_half)))};
  PasteBox b{0, 0, -1, -1, 1, 1, true};
  for (int i = 0; i < 4; ++i) {
    // NaN fails both comparisons.
    if (!(e[i] < kMaxPasteCoordinate && e[i] > -kMaxPasteCoordinate)) b.valid = false;
  }
  if (!b.valid) return b;
  b.x0 = static_cast<int64_t>(e[0]);  // truncation toward zero, like Tensor.to(torch.int64)
  b.y0 = static_cast<int64_t>(e[1]);
  b.x1 = static_cast<int64_t>(e[2]);
  b.y1 = static_cast<int64_t>(e[3]);
  b.w = b.x1 - b.x0 + 1;
  b.h = b.y1 - b.y0 + 1;
  if (b.w < 1) b.w = 1;
  if (b.h < 1) b.h = 1;
  return b;
}

// One bilinear tap pair along an axis of `in` input pixels resampled to `out`
// (align_corners=False): indices i0, i1 and weights l0, l1.
struct LinearTap {
  int64_t i0, i1;
  double l0, l1;
};

PYDETOPS_HOST_DEVICE inline LinearTap linear_tap_scaled(int64_t dst, int64_t in, double scale) {
  double src = scale * (static_cast<double>(dst) + 0.5) - 0.5;
  if (src < 0) src = 0;
  LinearTap t;
  t.i0 = static_cast<int64_t>(src);
  if (t.i0 > in - 1) t.i0 = in - 1;
  t.i1 = t.i0 + (t.i0 < in - 1 ? 1 : 0);
  t.l1 = src - static_cast<double>(t.i0);
  t.l0 = 1.0 - t.l1;
  return t;
}

PYDETOPS_HOST_DEVICE inline LinearTap linear_tap(int64_t dst, int64_t in, int64_t out) {
  return linear_tap_scaled(dst, in, static_cast<double>(in) / static_cast<double>(out));
}

// ------------------------------------------------------------------ bicubic

template <typename T>
PYDETOPS_HOST_DEVICE inline T cubic_near(T x, T A) {  // |x| <= 1
  return ((A + T(2)) * x - (A + T(3))) * x * x + T(1);
}

template <typename T>
PYDETOPS_HOST_DEVICE inline T cubic_far(T x, T A) {  // 1 < |x| < 2
  return ((A * x - T(5) * A) * x + T(8) * A) * x - T(4) * A;
}

// The four taps (clamped source indices) and weights of output pixel `dst`
// of an axis of `in` pixels resampled to `out` (align_corners=False), in the
// heatmaps' compute type T, as PyTorch's upsample_bicubic2d computes them.
template <typename T>
PYDETOPS_HOST_DEVICE inline void cubic_taps(int64_t dst, int64_t in, int64_t out, int64_t idx[4], T w[4]) {
  const T A = T(-0.75);
  const T scale = static_cast<T>(in) / static_cast<T>(out);
  const T real = scale * (static_cast<T>(dst) + T(0.5)) - T(0.5);
  int64_t i0 = static_cast<int64_t>(std::floor(real));
  if (i0 > in - 1) i0 = in - 1;
  T t = real - static_cast<T>(i0);
  t = t < T(0) ? T(0) : (t > T(1) ? T(1) : t);
  w[0] = cubic_far<T>(t + T(1), A);
  w[1] = cubic_near<T>(t, A);
  const T u = T(1) - t;
  w[2] = cubic_near<T>(u, A);
  w[3] = cubic_far<T>(u + T(1), A);
  for (int j = 0; j < 4; ++j) {
    int64_t k = i0 - 1 + j;
    k = k < 0 ? 0 : (k > in - 1 ? in - 1 : k);
    idx[j] = k;
  }
}

// Side of the resampled map of a RoI side `len` (already max(len, 1), in the
// rois' dtype): ceil(len). Sides that are not finite or exceed this limit
// make the RoI invalid (NaN keypoints and scores): beyond 2^24 float32 cannot
// hold the pixel positions.
constexpr double kMaxKeypointMapSide = 16777216.0;  // 2^24

// Per-RoI geometry, computed in the rois' dtype as torchvision does with tensor ops.
struct RoiMap {
  bool valid;
  int64_t h, w;                   // resampled map size
  double off_x, off_y;            // rois[:, 0], rois[:, 1]
  double corr_x, corr_y;          // width / w, height / h (rounded to the rois' dtype)
};

template <typename T, typename op_t>
PYDETOPS_HOST_DEVICE inline RoiMap roi_map_of(const T* r) {
  RoiMap m{false, 1, 1, 0, 0, 0, 0};
  T width = static_cast<T>(static_cast<op_t>(r[2]) - static_cast<op_t>(r[0]));
  T height = static_cast<T>(static_cast<op_t>(r[3]) - static_cast<op_t>(r[1]));
  // clamp(min=1) keeps NaN
  if (static_cast<op_t>(width) < op_t(1)) width = T(1);
  if (static_cast<op_t>(height) < op_t(1)) height = T(1);
  const double wd = static_cast<double>(width), hd = static_cast<double>(height);
  m.off_x = static_cast<double>(r[0]);
  m.off_y = static_cast<double>(r[1]);
  if (!(wd <= kMaxKeypointMapSide && hd <= kMaxKeypointMapSide) || !std::isfinite(m.off_x) ||
      !std::isfinite(m.off_y)) {
    return m;
  }
  m.valid = true;
  m.w = static_cast<int64_t>(std::ceil(wd));
  m.h = static_cast<int64_t>(std::ceil(hd));
  m.corr_x = static_cast<double>(static_cast<T>(static_cast<op_t>(width) / static_cast<op_t>(m.w)));
  m.corr_y = static_cast<double>(static_cast<T>(static_cast<op_t>(height) / static_cast<op_t>(m.h)));
  return m;
}

}  // namespace pk
}  // namespace pydetops
