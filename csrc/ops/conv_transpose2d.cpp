// Schema of conv_transpose2d: torch.nn.functional.conv_transpose2d's meaning
// (weight [C_in, C_out / groups, kH, kW]), computed by pydetops' own kernels.
#include "ops/conv_transpose2d.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <vector>

#include "common/checks.h"

namespace pydetops {
namespace {

// An int[2] schema argument: one value (broadcast) or two.
std::array<int64_t, 2> expand_pair(at::IntArrayRef v, const char* name) {
  TORCH_CHECK_VALUE(v.size() == 1 || v.size() == 2, "expected ", name,
                    " to be a single integer value or a list of 2 values to match the convolution dimensions, but got ",
                    name, "=", v);
  return {v[0], v.size() == 2 ? v[1] : v[0]};
}

}  // namespace

ConvTranspose2dShape check_conv_transpose2d_args(const at::Tensor& input, const at::Tensor& weight,
                                                 const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                                 at::IntArrayRef padding, at::IntArrayRef output_padding,
                                                 int64_t groups, at::IntArrayRef dilation) {
  TORCH_CHECK_VALUE(input.dim() == 3 || input.dim() == 4,
                    "Expected 3D (unbatched) or 4D (batched) input to conv_transpose2d, but got input of size: ",
                    input.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 4, "weight must be a 4-D Tensor[C_in, C_out / groups, kH, kW], got shape ",
                    weight.sizes());
  check_floating(input, "input");
  TORCH_CHECK_TYPE(weight.scalar_type() == input.scalar_type(), "weight must have the dtype of input (",
                   input.scalar_type(), "), got ", weight.scalar_type());
  check_same_device(input, "input", weight, "weight");
  const auto s = expand_pair(stride, "stride");
  const auto p = expand_pair(padding, "padding");
  const auto op = expand_pair(output_padding, "output_padding");
  const auto d = expand_pair(dilation, "dilation");
  TORCH_CHECK_VALUE(s[0] > 0 && s[1] > 0, "non-positive stride is not supported, got stride=", stride);
  TORCH_CHECK_VALUE(p[0] >= 0 && p[1] >= 0, "negative padding is not supported, got padding=", padding);
  TORCH_CHECK_VALUE(op[0] >= 0 && op[1] >= 0, "negative output_padding is not supported, got output_padding=",
                    output_padding);
  TORCH_CHECK_VALUE(d[0] > 0 && d[1] > 0, "dilation should be greater than zero, got dilation=", dilation);
  TORCH_CHECK_VALUE(op[0] < std::max(s[0], d[0]) && op[1] < std::max(s[1], d[1]),
                    "output padding must be smaller than either stride or dilation, but got output_padding=",
                    output_padding, ", stride=", stride, ", dilation=", dilation);
  TORCH_CHECK_VALUE(groups > 0, "non-positive groups is not supported, got groups=", groups);
  TORCH_CHECK_VALUE(weight.size(0) >= groups && weight.size(0) % groups == 0, "Given groups=", groups,
                    ", expected weight to be at least ", groups, " and divisible by groups at dimension 0, but got ",
                    "weight of size ", weight.sizes(), " instead");
  TORCH_CHECK_VALUE(weight.size(2) > 0 && weight.size(3) > 0, "weight must have a non-empty kernel, got weight of size ",
                    weight.sizes());
  const bool unbatched = input.dim() == 3;
  const int64_t off = unbatched ? 0 : 1;
  ConvTranspose2dShape sh;
  sh.unbatched = unbatched;
  sh.batch = unbatched ? 1 : input.size(0);
  sh.c_in = input.size(off);
  sh.h_in = input.size(off + 1);
  sh.w_in = input.size(off + 2);
  sh.groups = groups;
  sh.c_out = weight.size(1) * groups;
  sh.kh = weight.size(2);
  sh.kw = weight.size(3);
  TORCH_CHECK_VALUE(sh.c_in == weight.size(0), "Given transposed=1, weight of size ", weight.sizes(),
                    ", expected input", input.sizes(), " to have ", weight.size(0), " channels, but got ", sh.c_in,
                    " channels instead");
  TORCH_CHECK_VALUE(sh.h_in > 0 && sh.w_in > 0, "input must have a non-empty height and width, got input of size ",
                    input.sizes());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == sh.c_out, "Given transposed=1, weight of size ",
                      weight.sizes(), ", expected bias to be 1-dimensional with ", sh.c_out,
                      " elements, but got bias of size ", bias->sizes(), " instead");
    TORCH_CHECK_TYPE(bias->scalar_type() == input.scalar_type(), "bias must have the dtype of input (",
                     input.scalar_type(), "), got ", bias->scalar_type());
    check_same_device(input, "input", *bias, "bias");
  }
  sh.sh = s[0]; sh.sw = s[1];
  sh.ph = p[0]; sh.pw = p[1];
  sh.oph = op[0]; sh.opw = op[1];
  sh.dh = d[0]; sh.dw = d[1];
  // (in - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1,
  // each step checked so that no argument can wrap the output size.
  auto out_size = [](int64_t in, int64_t kernel, int64_t str, int64_t pad, int64_t opad, int64_t dil) {
    const int64_t a = checked_mul(in - 1, str, "stride");
    const int64_t b = checked_mul(dil, kernel - 1, "dilation");
    const int64_t c = checked_mul(pad, 2, "padding");
    return checked_add(checked_add(checked_add(a, b, "dilation") - c, opad, "output_padding"), 1, "padding");
  };
  sh.h_out = out_size(sh.h_in, sh.kh, sh.sh, sh.ph, sh.oph, sh.dh);
  sh.w_out = out_size(sh.w_in, sh.kw, sh.sw, sh.pw, sh.opw, sh.dw);
  TORCH_CHECK_VALUE(sh.h_out > 0 && sh.w_out > 0, "Given input size per channel: (", sh.h_in, " x ", sh.w_in,
                    "). Calculated output size per channel: (", sh.h_out, " x ", sh.w_out,
                    "). Output size is too small (reduce padding=", padding, ")");
  // The output, and the column scratch of the kernels (C_out * kH * kW rows of H_in * W_in).
  const char* size_arg = std::max(sh.sh, sh.sw) >= std::max(sh.dh, sh.dw) ? "stride" : "dilation";
  const int64_t out_plane = checked_mul(sh.h_out, sh.w_out, size_arg);
  checked_mul(checked_mul(sh.batch, sh.c_out, "weight"), out_plane, size_arg);
  check_result_size(static_cast<double>(sh.batch) * static_cast<double>(sh.c_out) * static_cast<double>(out_plane),
                    input.element_size(), size_arg);
  check_result_size(static_cast<double>(sh.c_out) * static_cast<double>(sh.kh) * static_cast<double>(sh.kw) *
                        static_cast<double>(sh.h_in) * static_cast<double>(sh.w_in),
                    input.element_size(), "weight");
  return sh;
}

ConvTranspose2dShape check_conv_transpose2d_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                                                          const at::Tensor& weight, at::IntArrayRef stride,
                                                          at::IntArrayRef padding, at::IntArrayRef output_padding,
                                                          int64_t groups, at::IntArrayRef dilation) {
  const ConvTranspose2dShape s =
      check_conv_transpose2d_args(input, weight, c10::nullopt, stride, padding, output_padding, groups, dilation);
  const std::vector<int64_t> out_shape =
      s.unbatched ? std::vector<int64_t>{s.c_out, s.h_out, s.w_out}
                  : std::vector<int64_t>{s.batch, s.c_out, s.h_out, s.w_out};
  TORCH_CHECK_VALUE(grad_output.sizes() == at::IntArrayRef(out_shape),
                    "grad_output must have the shape of conv_transpose2d's output ", at::IntArrayRef(out_shape),
                    ", got ", grad_output.sizes());
  TORCH_CHECK_TYPE(grad_output.scalar_type() == input.scalar_type(), "grad_output must have the dtype of input (",
                   input.scalar_type(), "), got ", grad_output.scalar_type());
  return s;
}

at::Tensor conv_transpose2d(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                            at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_padding,
                            int64_t groups, at::IntArrayRef dilation) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pydetops::conv_transpose2d", "")
                       .typed<decltype(conv_transpose2d)>();
  return op.call(input, weight, bias, stride, padding, output_padding, groups, dilation);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_transpose2d_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef output_padding, int64_t groups, at::IntArrayRef dilation,
    std::array<bool, 3> output_mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pydetops::_conv_transpose2d_backward", "")
                       .typed<decltype(conv_transpose2d_backward)>();
  return op.call(grad_output, input, weight, stride, padding, output_padding, groups, dilation, output_mask);
}

}  // namespace pydetops

TORCH_LIBRARY_FRAGMENT(pydetops, m) {
  m.set_python_module("pydetops.ops.conv_transpose");
  m.def(
      "conv_transpose2d(Tensor input, Tensor weight, Tensor? bias=None, int[2] stride=1, int[2] padding=0, "
      "int[2] output_padding=0, int groups=1, int[2] dilation=1) -> Tensor");
  m.def(
      "_conv_transpose2d_backward(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, int[2] padding, "
      "int[2] output_padding, int groups, int[2] dilation, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}
