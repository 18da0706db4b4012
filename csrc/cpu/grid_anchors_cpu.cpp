// CPU kernel of grid_anchors: one pass writing h*w*A*4 values; rows of cells are
// split over threads (each output element is written once, so any thread count
// gives the same bits).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "common/box_coding.h"
#include "common/checks.h"
#include "ops/grid_anchors.h"

namespace pydetops {
namespace {

at::Tensor grid_anchors_cpu(const at::Tensor& base_anchors, at::IntArrayRef feature_size, at::IntArrayRef stride) {
  check_grid_anchors_args(base_anchors, feature_size, stride);
  const int64_t h = feature_size[0], w = feature_size[1], a = base_anchors.size(0);
  const int64_t sy = stride[0], sx = stride[1];
  at::Tensor out = at::empty({h * w * a, 4}, base_anchors.options());
  if (out.numel() == 0) return out;
  const auto acc_type = accumulate_type_of(base_anchors.scalar_type());
  const at::Tensor base = base_anchors.to(acc_type).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, base_anchors.scalar_type(), "grid_anchors_cpu", [&] {
    using out_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(acc_type, "grid_anchors_cpu_acc", [&] {
      using acc_t = scalar_t;
      const acc_t* b = base.data_ptr<acc_t>();
      out_t* o = out.data_ptr<out_t>();
      const int64_t row_len = w * a * 4;  // values per row of cells
      const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(row_len, 1));
      at::parallel_for(0, h, grain, [&](int64_t y0, int64_t y1) {
        for (int64_t y = y0; y < y1; ++y) {
          out_t* row = o + y * row_len;
          for (int64_t x = 0; x < w; ++x) {
            for (int64_t k = 0; k < a; ++k) {
              coding::shift_anchor<out_t, acc_t>(b + 4 * k, static_cast<long long>(x * sx),
                                                 static_cast<long long>(y * sy), row + (x * a + k) * 4);
            }
          }
        }
      });
    });
  });
  return out;
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CPU, m) {
  m.impl("grid_anchors", &pydetops::grid_anchors_cpu);
}
