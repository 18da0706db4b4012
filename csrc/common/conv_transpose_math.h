// Index math of the 2-D transposed convolution and of the unpooling ops,
// written once for the CPU and (later) CUDA kernels: plain integer arithmetic,
// no ATen.
//
// Transposed convolution, one spatial axis (torch's meaning):
//   input position i (0 <= i < in), kernel tap k (0 <= k < kernel) lands on
//   output position  o = i * stride - padding + k * dilation
//   and out = (in - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1.
// The "columns" matrix of the kernels has one row per (c_out, kh, kw) and one
// column per input pixel; col2im scatters it into the output, im2col gathers
// the output-shaped gradient back into it.
#pragma once
#include <cstdint>

#include "common/macros.h"

namespace pydetops {

PYDETOPS_HOST_DEVICE inline int64_t conv_transpose_out_size(int64_t in, int64_t kernel, int64_t stride,
                                                            int64_t padding, int64_t output_padding,
                                                            int64_t dilation) {
  return (in - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1;
}

// Output position of input position i under kernel tap k (may fall outside [0, out)).
PYDETOPS_HOST_DEVICE inline int64_t conv_transpose_target(int64_t i, int64_t k, int64_t stride, int64_t padding,
                                                          int64_t dilation) {
  return i * stride - padding + k * dilation;
}

// The input positions i in [lo, hi) whose target under tap k lies in [0, out):
// 0 <= i*stride + off < out with off = k*dilation - padding. Empty when lo >= hi.
PYDETOPS_HOST_DEVICE inline void conv_transpose_valid_range(int64_t in, int64_t out, int64_t k, int64_t stride,
                                                            int64_t padding, int64_t dilation, int64_t* lo,
                                                            int64_t* hi) {
  const int64_t off = k * dilation - padding;
  // smallest i with i*stride + off >= 0
  int64_t a = off >= 0 ? 0 : (-off + stride - 1) / stride;
  // largest i with i*stride + off <= out - 1, plus one
  const int64_t top = out - 1 - off;
  int64_t b = top < 0 ? 0 : top / stride + 1;
  if (a > in) a = in;
  if (b > in) b = in;
  *lo = a;
  *hi = b < a ? a : b;
}

// Gather form, for one output position o (what a CUDA col2im thread computes):
// the taps k whose input position i = (o + padding - k*dilation) / stride is an
// exact, in-range division contribute columns[(c, k), i].
PYDETOPS_HOST_DEVICE inline bool conv_transpose_source(int64_t o, int64_t k, int64_t in, int64_t stride,
                                                       int64_t padding, int64_t dilation, int64_t* i) {
  const int64_t t = o + padding - k * dilation;
  if (t < 0 || t % stride != 0) return false;
  *i = t / stride;
  return *i < in;
}

// max_unpool2d's default output extent on one axis (torch's _unpool_output_size).
PYDETOPS_HOST_DEVICE inline int64_t max_unpool_default_size(int64_t in, int64_t kernel, int64_t stride,
                                                            int64_t padding) {
  return (in - 1) * stride + kernel - 2 * padding;
}

}  // namespace pydetops
