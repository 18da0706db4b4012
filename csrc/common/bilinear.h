// One bilinear tap of a feature map, written once for the CPU and CUDA kernels
// (RoIAlign, PS-RoIAlign, multi-level RoIAlign).
//
// Semantics (Mask R-CNN's RoIAlign as torchvision has it): a sample at (y, x)
// more than one pixel outside the map contributes nothing; otherwise it is
// clamped into the map and its four neighbours are weighted bilinearly.
// NaN or infinite coordinates fail the range test, so they contribute nothing
// and never turn into an out-of-range index.
#pragma once
#include <cstdint>

#include "common/macros.h"

namespace pydetops {

template <typename T>
struct BilinearTap {
  int64_t y_low, y_high, x_low, x_high;  // neighbour rows / columns, inside the map
  T w_ll, w_lh, w_hl, w_hh;              // weights of (y_low,x_low), (y_low,x_high), (y_high,x_low), (y_high,x_high)
  bool valid;                            // false: the sample contributes nothing
};

template <typename T>
PYDETOPS_HOST_DEVICE inline BilinearTap<T> bilinear_tap(T y, T x, int64_t height, int64_t width) {
  BilinearTap<T> t;
  // Written so that NaN fails it: every comparison with NaN is false.
  if (!(y >= T(-1) && y <= T(height) && x >= T(-1) && x <= T(width))) {
    t.valid = false;
    t.y_low = t.y_high = t.x_low = t.x_high = 0;
    t.w_ll = t.w_lh = t.w_hl = t.w_hh = T(0);
    return t;
  }
  t.valid = true;
  if (y <= T(0)) y = T(0);
  if (x <= T(0)) x = T(0);
  t.y_low = static_cast<int64_t>(y);
  t.x_low = static_cast<int64_t>(x);
  if (t.y_low >= height - 1) {
    t.y_low = t.y_high = height - 1;
    y = static_cast<T>(t.y_low);
  } else {
    t.y_high = t.y_low + 1;
  }
  if (t.x_low >= width - 1) {
    t.x_low = t.x_high = width - 1;
    x = static_cast<T>(t.x_low);
  } else {
    t.x_high = t.x_low + 1;
  }
  const T ly = y - static_cast<T>(t.y_low), lx = x - static_cast<T>(t.x_low);
  const T hy = T(1) - ly, hx = T(1) - lx;
  t.w_ll = hy * hx;
  t.w_lh = hy * lx;
  t.w_hl = ly * hx;
  t.w_hh = ly * lx;
  return t;
}

// Value of the tap on one channel plane stored with strides (row_stride, col_stride),
// so that channels-last planes are read in place.
template <typename T, typename scalar_t>
PYDETOPS_HOST_DEVICE inline T bilinear_value(const BilinearTap<T>& t, const scalar_t* plane, int64_t row_stride,
                                             int64_t col_stride) {
  if (!t.valid) return T(0);
  return t.w_ll * static_cast<T>(plane[t.y_low * row_stride + t.x_low * col_stride]) +
         t.w_lh * static_cast<T>(plane[t.y_low * row_stride + t.x_high * col_stride]) +
         t.w_hl * static_cast<T>(plane[t.y_high * row_stride + t.x_low * col_stride]) +
         t.w_hh * static_cast<T>(plane[t.y_high * row_stride + t.x_high * col_stride]);
}

}  // namespace pydetops
