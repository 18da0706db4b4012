// Sampling grid of one PS-RoIAlign bin (Light-Head R-CNN, as torchvision has
// it), written once for the CPU and CUDA kernels. No ATen.
//
//  * roi_start = x1 * spatial_scale - 0.5 (no rounding, no minimum size);
//    bin = (x2 - x1) * spatial_scale / pooled along each side.
//  * Bin p starts at roi_start + p * bin; its samples along one side are
//    start + (i + 0.5) * bin / g for i in [0, g), g = sampling_ratio when > 0,
//    else ceil(bin) ("adaptive").
//  * The bin's value is the sum of the bilinear taps (common/bilinear.h) over
//    the g_h x g_w samples divided by g_h * g_w.
//
// Where torchvision divides 0 by 0 (zero-size or inverted box with adaptive
// sampling, or a NaN box), the grid here has no samples and the value is 0.
// Adaptive grids are capped at kMaxAdaptiveGrid samples per side.
//
// Samples more than one cell off the map contribute nothing, so only the
// index range that can land in [-1, size] is visited (plus a margin of one
// each side, re-tested exactly by bilinear_tap): the work per bin is bounded by
// the map size, not by the box size, and the result equals the full loop's.
#pragma once
#include <cmath>
#include <cstdint>

#include "common/macros.h"

namespace pydetops {

constexpr int64_t kMaxAdaptiveGrid = int64_t(1) << 24;

template <typename T>
PYDETOPS_HOST_DEVICE inline int64_t ps_align_grid_size(T bin, int64_t sampling_ratio) {
  if (sampling_ratio > 0) return sampling_ratio;
  const T g = static_cast<T>(::ceil(bin));
  if (!(g >= T(1))) return 0;  // zero, negative or NaN size: no samples
  if (g >= static_cast<T>(kMaxAdaptiveGrid)) return kMaxAdaptiveGrid;
  return static_cast<int64_t>(g);
}

// Position of sample i of a bin (the expression order of torchvision's kernels).
template <typename T>
PYDETOPS_HOST_DEVICE inline T ps_align_sample(T bin_start, T bin, int64_t grid, int64_t i) {
  return bin_start + (static_cast<T>(i) + static_cast<T>(0.5)) * bin / static_cast<T>(grid);
}

// [*first, *last] (inclusive; empty when first > last): the sample indices in
// [0, grid) whose position may fall in [-1, size].
template <typename T>
PYDETOPS_HOST_DEVICE inline void ps_align_sample_range(T bin_start, T bin, int64_t grid, int64_t size,
                                                       int64_t* first, int64_t* last) {
  *first = 0;
  *last = grid - 1;
  if (grid <= 0) return;
  const T step = bin / static_cast<T>(grid);
  if (!(step > T(0) || step < T(0))) {  // zero or NaN step: all samples at one place
    const T y = ps_align_sample(bin_start, bin, grid, 0);
    if (!(y >= T(-1) && y <= static_cast<T>(size))) *last = -1;
    return;
  }
  T a = (T(-1) - bin_start) / step - T(0.5);
  T b = (static_cast<T>(size) - bin_start) / step - T(0.5);
  if (step < T(0)) {
    const T t = a;
    a = b;
    b = t;
  }
  if (!(a <= b)) {  // NaN start
    *last = -1;
    return;
  }
  T lo = static_cast<T>(::floor(a)) - T(1);
  T hi = static_cast<T>(::ceil(b)) + T(1);
  const T gmax = static_cast<T>(grid - 1);
  lo = lo < T(0) ? T(0) : (lo > gmax ? gmax + T(1) : lo);
  hi = hi > gmax ? gmax : (hi < T(0) ? T(-1) : hi);
  *first = static_cast<int64_t>(lo);
  *last = static_cast<int64_t>(hi);
}

}  // namespace pydetops
