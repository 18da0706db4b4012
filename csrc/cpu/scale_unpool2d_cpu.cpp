// CPU kernels of nearest_unpool2d and bed_of_nails_unpool2d (and backwards).
// One task per input row of one plane: it writes the s_h output rows that row
// owns (race-free), and the backward reads them back. The nearest backward
// sums each s_h x s_w block in the accumulate type (float32 for half types),
// in a fixed order.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/checks.h"
#include "ops/scale_unpool2d.h"

namespace pydetops {
namespace {

std::vector<int64_t> scaled_shape(const at::Tensor& t, const std::array<int64_t, 2>& s, bool up) {
  std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end());
  const size_t d = shape.size();
  shape[d - 2] = up ? shape[d - 2] * s[0] : shape[d - 2] / s[0];
  shape[d - 1] = up ? shape[d - 1] * s[1] : shape[d - 1] / s[1];
  return shape;
}

int64_t row_grain(int64_t row_elems) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, row_elems)); }

at::Tensor nearest_unpool2d_cpu(const at::Tensor& input, at::IntArrayRef scale_factor) {
  const auto s = check_scale_unpool2d_args(input, scale_factor, "input");
  at::Tensor out = at::empty(scaled_shape(input, s, true), input.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const at::Tensor x = input.contiguous();
  const int64_t W = input.size(-1), Wo = W * s[1], sh = s[0], sw = s[1];
  const int64_t rows = input.numel() / W;  // (planes * H) input rows
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "nearest_unpool2d_cpu", [&] {
    const scalar_t* src = x.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, row_grain(Wo * sh), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* a = src + r * W;
        scalar_t* b = dst + r * sh * Wo;  // row r of the input owns output rows r*sh .. r*sh+sh-1
        if (sw == 1) {
          std::memcpy(b, a, sizeof(scalar_t) * W);
        } else if (sw == 2) {
          for (int64_t w = 0; w < W; ++w) b[2 * w] = b[2 * w + 1] = a[w];
        } else {
          for (int64_t w = 0; w < W; ++w)
            for (int64_t j = 0; j < sw; ++j) b[w * sw + j] = a[w];
        }
        for (int64_t i = 1; i < sh; ++i) std::memcpy(b + i * Wo, b, sizeof(scalar_t) * Wo);
      }
    });
  });
  return out;
}

at::Tensor nearest_unpool2d_backward_cpu(const at::Tensor& grad_output, at::IntArrayRef scale_factor) {
  const auto s = check_scale_unpool2d_backward_args(grad_output, scale_factor);
  at::Tensor gi = at::empty(scaled_shape(grad_output, s, false),
                            grad_output.options().memory_format(at::MemoryFormat::Contiguous));
  if (gi.numel() == 0) return gi;
  const at::Tensor go = grad_output.contiguous();
  const int64_t W = gi.size(-1), Wo = grad_output.size(-1), sh = s[0], sw = s[1];
  const int64_t rows = gi.numel() / W;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(), "nearest_unpool2d_backward_cpu",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = go.data_ptr<scalar_t>();
    scalar_t* dst = gi.data_ptr<scalar_t>();
    at::parallel_for(0, rows, row_grain(Wo * sh), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(static_cast<size_t>(W));
      for (int64_t r = begin; r < end; ++r) {
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t i = 0; i < sh; ++i) {
          const scalar_t* b = g + (r * sh + i) * Wo;
          if (sw == 1) {
            for (int64_t w = 0; w < W; ++w) acc[w] += static_cast<acc_t>(b[w]);
          } else if (sw == 2) {
            for (int64_t w = 0; w < W; ++w) acc[w] += static_cast<acc_t>(b[2 * w]) + static_cast<acc_t>(b[2 * w + 1]);
          } else {
            for (int64_t w = 0; w < W; ++w)
              for (int64_t j = 0; j < sw; ++j) acc[w] += static_cast<acc_t>(b[w * sw + j]);
          }
        }
        scalar_t* a = dst + r * W;
        for (int64_t w = 0; w < W; ++w) a[w] = static_cast<scalar_t>(acc[w]);
      }
    });
  });
  return gi;
}

at::Tensor bed_of_nails_unpool2d_cpu(const at::Tensor& input, at::IntArrayRef scale_factor) {
  const auto s = check_scale_unpool2d_args(input, scale_factor, "input");
  at::Tensor out = at::empty(scaled_shape(input, s, true), input.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const at::Tensor x = input.contiguous();
  const int64_t W = input.size(-1), Wo = W * s[1], sh = s[0], sw = s[1];
  const int64_t rows = input.numel() / W;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "bed_of_nails_unpool2d_cpu", [&] {
    const scalar_t* src = x.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, row_grain(Wo * sh), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* a = src + r * W;
        scalar_t* b = dst + r * sh * Wo;
        std::fill(b, b + sh * Wo, scalar_t(0));
        for (int64_t w = 0; w < W; ++w) b[w * sw] = a[w];
      }
    });
  });
  return out;
}

at::Tensor bed_of_nails_unpool2d_backward_cpu(const at::Tensor& grad_output, at::IntArrayRef scale_factor) {
  const auto s = check_scale_unpool2d_backward_args(grad_output, scale_factor);
  at::Tensor gi = at::empty(scaled_shape(grad_output, s, false),
                            grad_output.options().memory_format(at::MemoryFormat::Contiguous));
  if (gi.numel() == 0) return gi;
  const at::Tensor go = grad_output.contiguous();
  const int64_t W = gi.size(-1), Wo = grad_output.size(-1), sh = s[0], sw = s[1];
  const int64_t rows = gi.numel() / W;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(),
                                  "bed_of_nails_unpool2d_backward_cpu", [&] {
    const scalar_t* g = go.data_ptr<scalar_t>();
    scalar_t* dst = gi.data_ptr<scalar_t>();
    at::parallel_for(0, rows, row_grain(W * 4), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* b = g + r * sh * Wo;
        scalar_t* a = dst + r * W;
        for (int64_t w = 0; w < W; ++w) a[w] = b[w * sw];
      }
    });
  });
  return gi;
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CPU, m) {
  m.impl("nearest_unpool2d", &pydetops::nearest_unpool2d_cpu);
  m.impl("_nearest_unpool2d_backward", &pydetops::nearest_unpool2d_backward_cpu);
  m.impl("bed_of_nails_unpool2d", &pydetops::bed_of_nails_unpool2d_cpu);
  m.impl("_bed_of_nails_unpool2d_backward", &pydetops::bed_of_nails_unpool2d_backward_cpu);
}
