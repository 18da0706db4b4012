// CPU kernels of max_unpool2d and its backward.
//
// One task per (image, channel) plane, inputs visited in row-major order, so
// for duplicate indices the last input wins, whatever the thread count. Every
// index is range-checked before it is used; an out-of-range index is never
// written, and the call then raises ValueError naming indices.
// Backward is a gather: grad_input[i] = grad_output[indices[i]] for the input
// that won its output position, 0 for inputs that lost to a later duplicate
// (their value never reached the output).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "common/checks.h"
#include "ops/max_unpool2d.h"

namespace pydetops {
namespace {

// The first out-of-range index in row-major order (for a deterministic message).
[[noreturn]] void raise_bad_index(const at::Tensor& idx, int64_t plane_out, int64_t h_out, int64_t w_out) {
  const int64_t* p = idx.data_ptr<int64_t>();
  const int64_t n = idx.numel();
  for (int64_t i = 0; i < n; ++i) {
    if (p[i] < 0 || p[i] >= plane_out) {
      TORCH_CHECK_VALUE(false, "Found an invalid max index in indices: ", p[i], " (output volumes are of size ",
                        h_out, "x", w_out, ")");
    }
  }
  TORCH_CHECK_VALUE(false, "Found an invalid max index in indices (output volumes are of size ", h_out, "x", w_out,
                    ")");
}

at::Tensor max_unpool2d_cpu(const at::Tensor& input, const at::Tensor& indices, at::IntArrayRef kernel_size,
                            at::IntArrayRef stride, at::IntArrayRef padding, at::OptionalIntArrayRef output_size) {
  const auto out_hw = check_max_unpool2d_args(input, indices, kernel_size, stride, padding, output_size);
  std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
  shape[shape.size() - 2] = out_hw[0];
  shape[shape.size() - 1] = out_hw[1];
  at::Tensor out = at::empty(shape, input.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t plane_in = input.size(-2) * input.size(-1), plane_out = out_hw[0] * out_hw[1];
  const int64_t planes = plane_in == 0 ? 0 : input.numel() / plane_in;
  if (planes == 0 || plane_in == 0) return out.zero_();
  const at::Tensor x = input.contiguous();
  const at::Tensor idx = indices.contiguous();
  std::atomic<bool> bad{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "max_unpool2d_cpu", [&] {
    const scalar_t* src = x.data_ptr<scalar_t>();
    const int64_t* ind = idx.data_ptr<int64_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 32768 / (plane_in + plane_out));
    at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
      bool local_bad = false;
      for (int64_t pl = begin; pl < end; ++pl) {
        const scalar_t* s = src + pl * plane_in;
        const int64_t* k = ind + pl * plane_in;
        scalar_t* d = dst + pl * plane_out;
        std::fill(d, d + plane_out, scalar_t(0));  // zero-fill and scatter in one pass over the plane
        for (int64_t i = 0; i < plane_in; ++i) {
          const int64_t j = k[i];
          if (j >= 0 && j < plane_out) {
            d[j] = s[i];
          } else {
            local_bad = true;
          }
        }
      }
      if (local_bad) bad.store(true, std::memory_order_relaxed);
    });
  });
  if (bad.load()) raise_bad_index(idx, plane_out, out_hw[0], out_hw[1]);
  return out;
}

at::Tensor max_unpool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& indices) {
  check_max_unpool2d_backward_args(grad_output, indices);
  const int64_t h_out = grad_output.size(-2), w_out = grad_output.size(-1);
  const int64_t plane_out = h_out * w_out;
  const int64_t plane_in = indices.size(-2) * indices.size(-1);
  at::Tensor grad_input = at::empty(indices.sizes(), grad_output.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t planes = plane_in == 0 ? 0 : indices.numel() / plane_in;
  if (planes == 0) return grad_input;
  const at::Tensor go = grad_output.contiguous();
  const at::Tensor idx = indices.contiguous();
  std::atomic<bool> bad{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(), "max_unpool2d_backward_cpu",
                                  [&] {
    const scalar_t* g = go.data_ptr<scalar_t>();
    const int64_t* ind = idx.data_ptr<int64_t>();
    scalar_t* gi = grad_input.data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 32768 / plane_in);
    at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
      // winner[j]: the last input of the plane that names output position j. Only
      // positions named in this plane are read, and pass 1 writes each of them first.
      std::vector<int64_t> winner(static_cast<size_t>(plane_out));
      bool local_bad = false;
      for (int64_t pl = begin; pl < end; ++pl) {
        const int64_t* k = ind + pl * plane_in;
        const scalar_t* gp = g + pl * plane_out;
        scalar_t* out = gi + pl * plane_in;
        for (int64_t i = 0; i < plane_in; ++i) {
          const int64_t j = k[i];
          if (j >= 0 && j < plane_out) winner[j] = i;
        }
        for (int64_t i = 0; i < plane_in; ++i) {
          const int64_t j = k[i];
          if (j >= 0 && j < plane_out) {
            out[i] = winner[j] == i ? gp[j] : scalar_t(0);
          } else {
            out[i] = scalar_t(0);
            local_bad = true;
          }
        }
      }
      if (local_bad) bad.store(true, std::memory_order_relaxed);
    });
  });
  if (bad.load()) raise_bad_index(idx, plane_out, h_out, w_out);
  return grad_input;
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CPU, m) {
  m.impl("max_unpool2d", &pydetops::max_unpool2d_cpu);
  m.impl("_max_unpool2d_backward", &pydetops::max_unpool2d_backward_cpu);
}
