// Bin geometry of the quantised RoI poolings (Fast R-CNN RoIPool, PS-RoIPool,
// SPP), written once for the CPU and CUDA kernels. No ATen.
//
//  * The box (x1, y1, x2, y2) is scaled by spatial_scale and each corner is
//    rounded (half away from zero).
//  * Its size is end - start (+ 1 for RoIPool / SPP, whose end is inclusive;
//    + 0 for PS-RoIPool), at least 1.
//  * Bin p of `pooled` covers [floor(p * s), ceil((p + 1) * s)) + start with
//    s = size / pooled, computed in T; neighbouring bins may overlap by a cell.
//    The range is clipped to [0, limit]; an empty range is an empty bin
//    (its output is 0 and it takes no gradient).
//  * A box with a non-finite coordinate has only empty bins. Rounded corners
//    are clamped to +-2^40 first, so absurd coordinates never overflow an
//    integer; they just give empty (or whole-map) bins.
#pragma once
#include <cmath>
#include <cstdint>

#include "common/macros.h"

namespace pydetops {

struct RoundedRoi {
  int64_t x0, y0;          // rounded, scaled top-left corner
  int64_t width, height;   // >= 1
  bool valid;              // false: a coordinate was NaN or infinite
};

struct BinRange {
  int64_t start, end;  // [start, end), inside [0, limit]
  PYDETOPS_HOST_DEVICE bool empty() const { return end <= start; }
};

constexpr double kRoiCoordLimit = 1099511627776.0;  // 2^40

template <typename T>
PYDETOPS_HOST_DEVICE inline int64_t rounded_coord(T v, T scale, bool& valid) {
  T r = v * scale;
  if (!(r == r) || r - r != T(0)) {  // NaN or +-inf
    valid = false;
    return 0;
  }
  r = static_cast<T>(::round(r));
  if (r > T(kRoiCoordLimit)) r = T(kRoiCoordLimit);
  if (r < T(-kRoiCoordLimit)) r = T(-kRoiCoordLimit);
  return static_cast<int64_t>(r);
}

// end_offset: 1 for RoIPool / SPP (inclusive end), 0 for PS-RoIPool.
template <typename T>
PYDETOPS_HOST_DEVICE inline RoundedRoi rounded_roi(T x1, T y1, T x2, T y2, T scale, int64_t end_offset) {
  RoundedRoi r;
  r.valid = true;
  r.x0 = rounded_coord(x1, scale, r.valid);
  r.y0 = rounded_coord(y1, scale, r.valid);
  const int64_t xe = rounded_coord(x2, scale, r.valid);
  const int64_t ye = rounded_coord(y2, scale, r.valid);
  const int64_t w = xe - r.x0 + end_offset, h = ye - r.y0 + end_offset;
  r.width = w > 1 ? w : 1;
  r.height = h > 1 ? h : 1;
  return r;
}

// Bin p (0 <= p < pooled) of an RoI side starting at roi_start with roi_size
// cells, clipped to [0, limit]. The bin size is computed in T, as the kernels
// of torchvision do for the input's dtype.
template <typename T>
PYDETOPS_HOST_DEVICE inline BinRange pool_bin_range(int64_t roi_start, int64_t roi_size, int64_t pooled, int64_t p,
                                                    int64_t limit) {
  const T bin = static_cast<T>(roi_size) / static_cast<T>(pooled);
  int64_t s = static_cast<int64_t>(::floor(static_cast<T>(p) * bin)) + roi_start;
  int64_t e = static_cast<int64_t>(::ceil(static_cast<T>(p + 1) * bin)) + roi_start;
  s = s < 0 ? 0 : (s > limit ? limit : s);
  e = e < 0 ? 0 : (e > limit ? limit : e);
  return BinRange{s, e};
}

// PS-RoIPool clips its bins to [0, H - 1] x [0, W - 1], as torchvision's ps_roi_pool
// forward does on CPU and CUDA: a bin never takes the map's last row or column (so a
// 1x1 map pools to 0). Kept for drop-in equality of the outputs. The backward uses the
// same bins, so its gradient is the exact one of this forward (torchvision's backward
// clips to H / W instead and spreads gradient onto cells its forward never read).
PYDETOPS_HOST_DEVICE inline int64_t ps_roi_pool_limit(int64_t extent) { return extent - 1; }

}  // namespace pydetops
