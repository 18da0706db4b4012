// Schema of max_unpool2d: torch.nn.functional.max_unpool2d's meaning. indices
// (from max_pool2d(..., return_indices=True)) are flat positions in each
// H_out * W_out plane. Where several inputs of one plane name the same output
// position, the input that comes last in row-major order wins (deterministic),
// and the backward sends the gradient of that position to the winner only.
#include "ops/max_unpool2d.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "common/checks.h"

namespace pydetops {
namespace {

std::array<int64_t, 2> expand_pair(at::IntArrayRef v, const char* name) {
  TORCH_CHECK_VALUE(v.size() == 1 || v.size() == 2, name, " must be an int or a pair of ints, got ", v);
  return {v[0], v.size() == 2 ? v[1] : v[0]};
}

void check_input_and_indices(const at::Tensor& input, const at::Tensor& indices, const char* input_name) {
  TORCH_CHECK_VALUE(input.dim() == 3 || input.dim() == 4, input_name,
                    " to max_unpool2d should be a 3d or 4d Tensor, but got a tensor with ", input.dim(),
                    " dimensions.");
  TORCH_CHECK_TYPE(at::isFloatingType(input.scalar_type()), input_name,
                   " must be a floating-point tensor (float16, bfloat16, float32, float64), got ",
                   input.scalar_type());
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kLong, "elements in indices should be type int64 but got: ",
                   indices.scalar_type());
  check_same_device(input, input_name, indices, "indices");
}

}  // namespace

std::array<int64_t, 2> check_max_unpool2d_args(const at::Tensor& input, const at::Tensor& indices,
                                               at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                               at::IntArrayRef padding, at::OptionalIntArrayRef output_size) {
  check_input_and_indices(input, indices, "input");
  TORCH_CHECK_VALUE(indices.sizes() == input.sizes(),
                    "Expected shape of indices to be same as that of the input tensor (", input.sizes(),
                    ") but got indices tensor with shape: ", indices.sizes());
  const auto k = expand_pair(kernel_size, "kernel_size");
  const auto s = expand_pair(stride, "stride");
  const auto p = expand_pair(padding, "padding");
  TORCH_CHECK_VALUE(k[0] > 0 && k[1] > 0, "kernel_size must be positive, got ", kernel_size);
  TORCH_CHECK_VALUE(s[0] > 0 && s[1] > 0, "stride must be positive, got ", stride);
  TORCH_CHECK_VALUE(p[0] >= 0 && p[1] >= 0, "padding must be non-negative, got ", padding);
  const int64_t h_in = input.size(-2), w_in = input.size(-1);
  // (in - 1) * stride + kernel - 2 * padding, each step checked: a wrapped
  // extent would give a wrong (small) output instead of an error.
  auto default_size = [&](int64_t in, int d) {
    const int64_t a = checked_mul(in > 0 ? in - 1 : 0, s[d], "stride");
    const int64_t b = checked_add(a, k[d], "kernel_size");
    const int64_t twice_pad = checked_mul(p[d], 2, "padding");
    return in > 0 ? b - twice_pad : max_unpool_default_size(in, k[d], s[d], p[d]);
  };
  const std::array<int64_t, 2> def = {default_size(h_in, 0), default_size(w_in, 1)};
  std::array<int64_t, 2> out = def;
  if (output_size.has_value()) {
    at::IntArrayRef os = *output_size;
    TORCH_CHECK_VALUE(os.size() == 2 || os.size() == 4,
                      "output_size should be a sequence containing 2 or 4 elements, but it has a length of '",
                      os.size(), "'");
    if (os.size() == 4) os = os.slice(2);
    for (int d = 0; d < 2; ++d) {
      const int64_t lo = def[d] - s[d], hi = checked_add(def[d], s[d], "stride");
      TORCH_CHECK_VALUE(lo < os[d] && os[d] < hi, "invalid output_size \"", *output_size, "\" (dim ", d,
                        " must be between ", lo, " and ", hi, ")");
      out[d] = os[d];
    }
  }
  TORCH_CHECK_VALUE(out[0] > 0 && out[1] > 0, "output_size must be positive, got (", out[0], ", ", out[1],
                    ") from kernel_size=", kernel_size, ", stride=", stride, ", padding=", padding);
  const int64_t planes = input.dim() == 4 ? input.size(0) * input.size(1) : input.size(0);
  const char* size_arg = output_size.has_value() ? "output_size" : "stride";
  checked_mul(checked_mul(planes, out[0], size_arg), out[1], size_arg);
  check_result_size(static_cast<double>(planes) * static_cast<double>(out[0]) * static_cast<double>(out[1]),
                    input.element_size(), size_arg);
  return out;
}

void check_max_unpool2d_backward_args(const at::Tensor& grad_output, const at::Tensor& indices) {
  check_input_and_indices(grad_output, indices, "grad_output");
  TORCH_CHECK_VALUE(indices.dim() == grad_output.dim() &&
                        indices.sizes().slice(0, indices.dim() - 2) ==
                            grad_output.sizes().slice(0, grad_output.dim() - 2),
                    "indices ", indices.sizes(), " and grad_output ", grad_output.sizes(),
                    " must agree in all but the last two dimensions");
}

at::Tensor max_unpool2d(const at::Tensor& input, const at::Tensor& indices, at::IntArrayRef kernel_size,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::OptionalIntArrayRef output_size) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pydetops::max_unpool2d", "")
                       .typed<decltype(max_unpool2d)>();
  return op.call(input, indices, kernel_size, stride, padding, output_size);
}

at::Tensor max_unpool2d_backward(const at::Tensor& grad_output, const at::Tensor& indices) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pydetops::_max_unpool2d_backward", "")
                       .typed<decltype(max_unpool2d_backward)>();
  return op.call(grad_output, indices);
}

}  // namespace pydetops

TORCH_LIBRARY_FRAGMENT(pydetops, m) {
  m.set_python_module("pydetops.ops.unpool");
  m.def(
      "max_unpool2d(Tensor input, Tensor indices, int[2] kernel_size, int[2] stride, int[2] padding=0, "
      "int[]? output_size=None) -> Tensor");
  m.def("_max_unpool2d_backward(Tensor grad_output, Tensor indices) -> Tensor");
}
