// Schemas of the two fixed-pattern unpooling ops, nearest_unpool2d and
// bed_of_nails_unpool2d (one file: they share their shape rules).
#include "ops/scale_unpool2d.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "common/checks.h"

namespace pydetops {
namespace {

std::array<int64_t, 2> check_tensor_and_scale(const at::Tensor& input, at::IntArrayRef scale_factor,
                                              const char* input_name) {
  TORCH_CHECK_VALUE(input.dim() == 3 || input.dim() == 4, input_name,
                    " must be a 3-D (C, H, W) or 4-D (N, C, H, W) Tensor, got shape ", input.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(input.scalar_type()), input_name,
                   " must be a floating-point tensor (float16, bfloat16, float32, float64), got ",
                   input.scalar_type());
  TORCH_CHECK_VALUE(scale_factor.size() == 1 || scale_factor.size() == 2,
                    "scale_factor must be an int or a pair of ints, got ", scale_factor);
  const std::array<int64_t, 2> s = {scale_factor[0], scale_factor.size() == 2 ? scale_factor[1] : scale_factor[0]};
  TORCH_CHECK_VALUE(s[0] >= 1 && s[1] >= 1, "scale_factor must be positive integers, got ", scale_factor);
  return s;
}

}  // namespace

std::array<int64_t, 2> check_scale_unpool2d_args(const at::Tensor& input, at::IntArrayRef scale_factor,
                                                 const char* input_name) {
  const auto s = check_tensor_and_scale(input, scale_factor, input_name);
  // The output is H * s[0] by W * s[1]: neither product may wrap (a wrapped
  // extent would allocate a small output that the kernel then overruns).
  const int64_t h_out = checked_mul(input.size(-2), s[0], "scale_factor");
  const int64_t w_out = checked_mul(input.size(-1), s[1], "scale_factor");
  const int64_t planes = input.dim() == 4 ? checked_mul(input.size(0), input.size(1), "input") : input.size(0);
  checked_mul(checked_mul(planes, h_out, "scale_factor"), w_out, "scale_factor");
  check_result_size(static_cast<double>(planes) * static_cast<double>(h_out) * static_cast<double>(w_out),
                    input.element_size(), "scale_factor");
  return s;
}

std::array<int64_t, 2> check_scale_unpool2d_backward_args(const at::Tensor& grad_output,
                                                          at::IntArrayRef scale_factor) {
  const auto s = check_tensor_and_scale(grad_output, scale_factor, "grad_output");
  TORCH_CHECK_VALUE(grad_output.size(-2) % s[0] == 0 && grad_output.size(-1) % s[1] == 0,
                    "grad_output's height and width must be multiples of scale_factor ", scale_factor, ", got shape ",
                    grad_output.sizes());
  return s;
}

#define PYDETOPS_DISPATCHER_CALLER(NAME, SCHEMA, ARG0)                                                \
  at::Tensor NAME(const at::Tensor& ARG0, at::IntArrayRef scale_factor) {                          \
    static auto op = c10::Dispatcher::singleton().findSchemaOrThrow(SCHEMA, "").typed<decltype(NAME)>(); \
    return op.call(ARG0, scale_factor);                                                             \
  }
PYDETOPS_DISPATCHER_CALLER(nearest_unpool2d, "pydetops::nearest_unpool2d", input)
PYDETOPS_DISPATCHER_CALLER(nearest_unpool2d_backward, "pydetops::_nearest_unpool2d_backward", grad_output)
PYDETOPS_DISPATCHER_CALLER(bed_of_nails_unpool2d, "pydetops::bed_of_nails_unpool2d", input)
PYDETOPS_DISPATCHER_CALLER(bed_of_nails_unpool2d_backward, "pydetops::_bed_of_nails_unpool2d_backward", grad_output)
#undef PYDETOPS_DISPATCHER_CALLER

}  // namespace pydetops

TORCH_LIBRARY_FRAGMENT(pydetops, m) {
  m.set_python_module("pydetops.ops.unpool");
  m.def("nearest_unpool2d(Tensor input, int[2] scale_factor) -> Tensor");
  m.def("_nearest_unpool2d_backward(Tensor grad_output, int[2] scale_factor) -> Tensor");
  m.def("bed_of_nails_unpool2d(Tensor input, int[2] scale_factor) -> Tensor");
  m.def("_bed_of_nails_unpool2d_backward(Tensor grad_output, int[2] scale_factor) -> Tensor");
}
