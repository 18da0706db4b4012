// Geometry of RoIAlign (Mask R-CNN) and RoIPool (Fast R-CNN) as torchvision
// has them, written once for the CPU and CUDA kernels.
//
// RoIAlign is separable: a sample at (y, x) is valid iff y and x are each
// within [-1, size], and its four bilinear weights are products of one weight
// per axis. bilinear_axis() below is bilinear_tap() (common/bilinear.h) along
// one axis: w_ll = y.w_low * x.w_low etc. gives bit-identical weights, and a
// 2-D sample is valid iff both of its axis samples are. The kernels compute the
// axis samples of a RoI once and combine them per bin.
#pragma once
#include <cmath>
#include <cstdint>

#include "common/macros.h"

namespace pydetops {

// ---- RoIAlign -------------------------------------------------------------

template <typename T>
struct RoIAlignBox {
  T start_h, start_w;       // top-left corner on the feature map
  T bin_h, bin_w;           // bin size (negative for inverted boxes when aligned)
  int64_t grid_h, grid_w;   // samples per bin along each axis; <= 0: no samples
  T count;                  // the divisor: max(grid_h * grid_w, 1)
  bool valid;               // false: non-finite coordinates, the RoI pools to zeros
};

// Largest sampling grid we let an adaptive (sampling_ratio <= 0) RoI ask for
// along one axis. Only absurd boxes reach it (a side of 2^30 bins); the
// kernels visit only the samples that fall on the map, so this merely keeps the
// integer conversion defined.
constexpr double kMaxAdaptiveGrid = 1073741824.0;  // 2^30

// coordinate * spatial_scale, rounded on its own: nvcc would otherwise fuse the
// "- offset" that follows into an FMA, which the CPU build (-ffp-contract=off)
// does not do, and CPU and CUDA corners could differ by one rounding.
PYDETOPS_HOST_DEVICE inline double scaled_coord(double v, double spatial_scale) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(v, spatial_scale);
#else
  return v * spatial_scale;
#endif
}

// x1, y1, x2, y2 in input coordinates. The corner is computed in double and
// rounded to T, as torchvision's CPU kernel does (T * double spatial_scale).
template <typename T>
PYDETOPS_HOST_DEVICE inline RoIAlignBox<T> roi_align_box(T x1, T y1, T x2, T y2, double spatial_scale,
                                                         int64_t pooled_h, int64_t pooled_w,
                                                         int64_t sampling_ratio, bool aligned) {
  RoIAlignBox<T> b;
  const double offset = aligned ? 0.5 : 0.0;
  b.start_w = static_cast<T>(scaled_coord(static_cast<double>(x1), spatial_scale) - offset);
  b.start_h = static_cast<T>(scaled_coord(static_cast<double>(y1), spatial_scale) - offset);
  const T end_w = static_cast<T>(scaled_coord(static_cast<double>(x2), spatial_scale) - offset);
  const T end_h = static_cast<T>(scaled_coord(static_cast<double>(y2), spatial_scale) - offset);
  T roi_w = end_w - b.start_w;
  T roi_h = end_h - b.start_h;
  if (!aligned) {  // force malformed boxes to 1x1
    roi_w = roi_w > T(1) ? roi_w : T(1);
    roi_h = roi_h > T(1) ? roi_h : T(1);
  }
  b.bin_h = roi_h / static_cast<T>(pooled_h);
  b.bin_w = roi_w / static_cast<T>(pooled_w);
  // Non-finite boxes (or ones whose projection overflows T) are invalid. The
  // far corner is tested on its own: with aligned=False the 1x1 clamp above
  // would turn a NaN or -inf extent into a finite 1 and pool a strip.
  b.valid = std::isfinite(static_cast<double>(b.start_h)) && std::isfinite(static_cast<double>(b.start_w)) &&
            std::isfinite(static_cast<double>(end_h)) && std::isfinite(static_cast<double>(end_w)) &&
            std::isfinite(static_cast<double>(b.bin_h)) && std::isfinite(static_cast<double>(b.bin_w));
  if (!b.valid) {
    b.grid_h = b.grid_w = 0;
    b.count = T(1);
    return b;
  }
  if (sampling_ratio > 0) {
    b.grid_h = b.grid_w = sampling_ratio;
  } else {
    double gh = std::ceil(static_cast<double>(b.bin_h));
    double gw = std::ceil(static_cast<double>(b.bin_w));
    gh = gh > kMaxAdaptiveGrid ? kMaxAdaptiveGrid : gh;
    gw = gw > kMaxAdaptiveGrid ? kMaxAdaptiveGrid : gw;
    gh = gh < -kMaxAdaptiveGrid ? -kMaxAdaptiveGrid : gh;
    gw = gw < -kMaxAdaptiveGrid ? -kMaxAdaptiveGrid : gw;
    b.grid_h = static_cast<int64_t>(gh);
    b.grid_w = static_cast<int64_t>(gw);
  }
  const double cnt = static_cast<double>(b.grid_h) * static_cast<double>(b.grid_w);
  b.count = static_cast<T>(cnt > 1.0 ? cnt : 1.0);
  return b;
}

// Coordinate of sample i (0 <= i < grid) of the bin that starts at `bin_start`,
// in torchvision's order of operations.
template <typename T>
PYDETOPS_HOST_DEVICE inline T roi_align_sample(T bin_start, T bin, int64_t i, int64_t grid) {
  return bin_start + static_cast<T>(static_cast<T>(i) + T(0.5)) * bin / static_cast<T>(grid);
}

// A range [*lo, *hi) of sample indices in [0, grid) outside which no sample of
// the bin can be valid (lie in [-1, size]). A superset: callers still test each
// sample. It keeps the work of a huge box proportional to the map, not the box.
template <typename T>
PYDETOPS_HOST_DEVICE inline void roi_align_sample_range(T bin_start, T bin, int64_t grid, int64_t size, int64_t* lo,
                                                        int64_t* hi) {
  *lo = 0;
  *hi = grid > 0 ? grid : 0;
  if (grid <= 0) return;
  const double step = static_cast<double>(bin) / static_cast<double>(grid);
  if (!(step > 1e-12 || step < -1e-12)) return;  // all samples (nearly) at one place: test each
  const double t1 = (-1.0 - static_cast<double>(bin_start)) / step - 0.5;
  const double t2 = (static_cast<double>(size) - static_cast<double>(bin_start)) / step - 0.5;
  double a = (t1 < t2 ? t1 : t2) - 2.0, b = (t1 < t2 ? t2 : t1) + 2.0;
  a = a < 0.0 ? 0.0 : a;
  b = b > static_cast<double>(grid) ? static_cast<double>(grid) : b;
  if (!(a < b)) {
    *lo = *hi = 0;
    return;
  }
  *lo = static_cast<int64_t>(std::floor(a));
  *hi = static_cast<int64_t>(std::ceil(b));
  if (*hi > grid) *hi = grid;
}

// One axis of bilinear_tap(): the neighbour indices and weights of a sample at
// v on an axis of `size` pixels (size >= 1); invalid (contributes nothing)
// outside [-1, size] or NaN.
template <typename T>
struct BilinearAxis {
  int64_t low, high;
  T w_low, w_high;
  bool valid;
};

template <typename T>
PYDETOPS_HOST_DEVICE inline BilinearAxis<T> bilinear_axis(T v, int64_t size) {
  BilinearAxis<T> a;
  if (!(size > 0 && v >= T(-1) && v <= static_cast<T>(size))) {
    a.valid = false;
    a.low = a.high = 0;
    a.w_low = a.w_high = T(0);
    return a;
  }
  a.valid = true;
  if (v <= T(0)) v = T(0);
  a.low = static_cast<int64_t>(v);
  if (a.low >= size - 1) {
    a.low = a.high = size - 1;
    v = static_cast<T>(a.low);
  } else {
    a.high = a.low + 1;
  }
  const T l = v - static_cast<T>(a.low);
  a.w_low = T(1) - l;
  a.w_high = l;
  return a;
}

// ---- RoIPool ---------------------------------------------------------------

struct RoIPoolBox {
  int64_t start_h, start_w;  // rounded corner on the feature map
  int64_t height, width;     // >= 1
  bool valid;                // false: non-finite coordinates, the RoI pools to zeros
};

// Rounded projections are clamped to +-2^40 so that the integer arithmetic
// stays defined for absurd boxes (every bin of such a box is clamped to the map
// or empty anyway).
PYDETOPS_HOST_DEVICE inline int64_t roi_pool_round(double v) {
  const double lim = 1099511627776.0;  // 2^40
  v = std::round(v);
  v = v > lim ? lim : (v < -lim ? -lim : v);
  return static_cast<int64_t>(v);
}

template <typename T>
PYDETOPS_HOST_DEVICE inline RoIPoolBox roi_pool_box(T x1, T y1, T x2, T y2, double spatial_scale) {
  RoIPoolBox b;
  const double dx1 = static_cast<double>(x1) * spatial_scale, dy1 = static_cast<double>(y1) * spatial_scale;
  const double dx2 = static_cast<double>(x2) * spatial_scale, dy2 = static_cast<double>(y2) * spatial_scale;
  b.valid = std::isfinite(dx1) && std::isfinite(dy1) && std::isfinite(dx2) && std::isfinite(dy2);
  if (!b.valid) {
    b.start_h = b.start_w = 0;
    b.height = b.width = 1;
    return b;
  }
  b.start_w = roi_pool_round(dx1);
  b.start_h = roi_pool_round(dy1);
  const int64_t end_w = roi_pool_round(dx2), end_h = roi_pool_round(dy2);
  b.width = end_w - b.start_w + 1;
  b.height = end_h - b.start_h + 1;
  b.width = b.width > 1 ? b.width : 1;
  b.height = b.height > 1 ? b.height : 1;
  return b;
}

// The rows (or columns) [*start, *end) of bin p of `pooled` bins over a RoI
// side of `roi_size` pixels that starts at `roi_start`, clamped to [0, size].
// floor/ceil bin edges computed in T as torchvision does.
template <typename T>
PYDETOPS_HOST_DEVICE inline void roi_pool_bin(int64_t p, int64_t pooled, int64_t roi_start, int64_t roi_size,
                                              int64_t size, int64_t* start, int64_t* end) {
  const T bin = static_cast<T>(roi_size) / static_cast<T>(pooled);
  int64_t s = static_cast<int64_t>(std::floor(static_cast<T>(p) * bin));
  int64_t e = static_cast<int64_t>(std::ceil(static_cast<T>(p + 1) * bin));
  s += roi_start;
  e += roi_start;
  s = s < 0 ? 0 : (s > size ? size : s);
  e = e < 0 ? 0 : (e > size ? size : e);
  *start = s;
  *end = e;
}

}  // namespace pydetops
