// CPU kernels of conv_transpose2d and its backward.
//
// Forward, per group g (C_in/g input channels, C_out/g output channels):
//   columns_g [C_out/g * kH * kW, B*H*W] = weight_g^T [.., C_in/g] @ input_g [C_in/g, B*H*W]
// one GEMM for a whole batch chunk B (input is laid out channel-major once),
// then col2im: every (image, output channel) plane is owned by one task,
// which starts from the bias and scatter-adds its kH*kW column rows into the
// plane (taps in a fixed order: deterministic, race-free, no atomics).
//
// Backward: im2col gathers grad_output into the same columns layout (zeros
// where a tap falls outside the output), then
//   grad_input_g  = weight_g [C_in/g, C_out/g*kH*kW] @ columns_g
//   grad_weight_g += input_g @ columns_g^T            (batch chunks in order)
//   grad_bias[c]  = sum of grad_output[:, c]          (one task per channel)
// The batch is cut into chunks only when the columns would exceed
// kColumnsBudget elements; the cut depends on the shapes alone.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>

#include "common/checks.h"
#include "ops/conv_transpose2d.h"

namespace pydetops {
namespace {

constexpr int64_t kColumnsBudget = int64_t(1) << 24;  // elements of the columns buffer (64 MiB in float32)
constexpr int64_t kMinTaskWork = 32768;                 // elements per thread below which a loop runs inline

// Tasks per at::parallel_for grain so that small problems are not split.
int64_t grain_for(int64_t work_per_task) {
  return std::max<int64_t>(1, kMinTaskWork / std::max<int64_t>(1, work_per_task));
}

int64_t batch_chunk(const ConvTranspose2dShape& s) {
  const int64_t per_image = std::max<int64_t>(1, s.c_out * s.kh * s.kw * s.h_in * s.w_in);
  return std::max<int64_t>(1, std::min<int64_t>(s.batch, kColumnsBudget / per_image));
}

// dst[w * S] += src[w] for w in [0, n): S a compile-time stride for the common cases.
template <int S, typename T>
inline void scatter_add_row(T* __restrict dst, const T* __restrict src, int64_t n, int64_t stride) {
  if (S > 0) {
    for (int64_t w = 0; w < n; ++w) dst[w * S] += src[w];
  } else {
    for (int64_t w = 0; w < n; ++w) dst[w * stride] += src[w];
  }
}

template <int S, typename T>
inline void gather_row(T* __restrict dst, const T* __restrict src, int64_t n, int64_t stride) {
  if (S > 0) {
    for (int64_t w = 0; w < n; ++w) dst[w] = src[w * S];
  } else {
    for (int64_t w = 0; w < n; ++w) dst[w] = src[w * stride];
  }
}

// columns: [G][C_out/g * kH * kW][nb * H * W]; out: the nb images' [C_out, Ho, Wo] planes.
template <int S, typename acc_t>
void col2im(const acc_t* cols, const acc_t* bias, const ConvTranspose2dShape& s, int64_t nb, acc_t* out) {
  const int64_t hw = s.h_in * s.w_in, plane_size = s.h_out * s.w_out, kk = s.kh * s.kw;
  const int64_t cols_width = nb * hw;
  at::parallel_for(0, nb * s.c_out, grain_for(kk * hw + plane_size), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / s.c_out, co = task % s.c_out;
      acc_t* plane = out + task * plane_size;
      const acc_t b = bias ? bias[co] : acc_t(0);
      std::fill(plane, plane + plane_size, b);
      // Row co*kk of the group-major columns = row (g, co % c_out_g) since groups stack in order.
      const acc_t* rows = cols + co * kk * cols_width + n * hw;
      for (int64_t ki = 0; ki < s.kh; ++ki) {
        int64_t h_lo, h_hi;
        conv_transpose_valid_range(s.h_in, s.h_out, ki, s.sh, s.ph, s.dh, &h_lo, &h_hi);
        for (int64_t kj = 0; kj < s.kw; ++kj) {
          int64_t w_lo, w_hi;
          conv_transpose_valid_range(s.w_in, s.w_out, kj, s.sw, s.pw, s.dw, &w_lo, &w_hi);
          if (w_lo >= w_hi) continue;
          const acc_t* row = rows + (ki * s.kw + kj) * cols_width;
          for (int64_t h = h_lo; h < h_hi; ++h) {
            const int64_t oh = conv_transpose_target(h, ki, s.sh, s.ph, s.dh);
            const int64_t ow = conv_transpose_target(w_lo, kj, s.sw, s.pw, s.dw);
            scatter_add_row<S>(plane + oh * s.w_out + ow, row + h * s.w_in + w_lo, w_hi - w_lo, s.sw);
          }
        }
      }
    }
  });
}

// The inverse gather: columns[(co, ki, kj), (n, h, w)] = grad_out[n, co, target(h, ki), target(w, kj)] or 0.
template <int S, typename acc_t>
void im2col(const acc_t* grad_out, const ConvTranspose2dShape& s, int64_t nb, acc_t* cols) {
  const int64_t hw = s.h_in * s.w_in, plane_size = s.h_out * s.w_out, kk = s.kh * s.kw;
  const int64_t cols_width = nb * hw;
  at::parallel_for(0, nb * s.c_out, grain_for(kk * hw + plane_size), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / s.c_out, co = task % s.c_out;
      const acc_t* plane = grad_out + task * plane_size;
      acc_t* rows = cols + co * kk * cols_width + n * hw;
      for (int64_t ki = 0; ki < s.kh; ++ki) {
        int64_t h_lo, h_hi;
        conv_transpose_valid_range(s.h_in, s.h_out, ki, s.sh, s.ph, s.dh, &h_lo, &h_hi);
        for (int64_t kj = 0; kj < s.kw; ++kj) {
          int64_t w_lo, w_hi;
          conv_transpose_valid_range(s.w_in, s.w_out, kj, s.sw, s.pw, s.dw, &w_lo, &w_hi);
          acc_t* row = rows + (ki * s.kw + kj) * cols_width;
          if (w_lo >= w_hi) {
            std::fill(row, row + hw, acc_t(0));
            continue;
          }
          std::fill(row, row + h_lo * s.w_in, acc_t(0));
          for (int64_t h = h_lo; h < h_hi; ++h) {
            acc_t* dst = row + h * s.w_in;
            std::fill(dst, dst + w_lo, acc_t(0));
            const int64_t oh = conv_transpose_target(h, ki, s.sh, s.ph, s.dh);
            const int64_t ow = conv_transpose_target(w_lo, kj, s.sw, s.pw, s.dw);
            gather_row<S>(dst + w_lo, plane + oh * s.w_out + ow, w_hi - w_lo, s.sw);
            std::fill(dst + w_hi, dst + s.w_in, acc_t(0));
          }
          std::fill(row + h_hi * s.w_in, row + hw, acc_t(0));
        }
      }
    }
  });
}

template <typename F>
void dispatch_stride(int64_t stride, F&& f) {
  switch (stride) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    default: f(std::integral_constant<int, 0>{}); break;
  }
}

// [C_in, N*H*W] (channel-major) copy of the input in the accumulate type.
at::Tensor channel_major(const at::Tensor& x4, at::ScalarType acc_type) {
  return x4.to(acc_type).permute({1, 0, 2, 3}).contiguous().view({x4.size(1), -1});
}

at::Tensor conv_transpose2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                                const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef output_padding, int64_t groups,
                                at::IntArrayRef dilation) {
  const ConvTranspose2dShape s =
      check_conv_transpose2d_args(input, weight, bias, stride, padding, output_padding, groups, dilation);
  const auto acc_type = accumulate_type_of(input.scalar_type());
  const at::Tensor x4 = s.unbatched ? input.unsqueeze(0) : input;
  at::Tensor out = at::empty({s.batch, s.c_out, s.h_out, s.w_out}, input.options().dtype(acc_type));
  const bool has_bias = bias.has_value() && bias->defined();
  if (out.numel() > 0) {
    const int64_t G = s.groups, cin_g = s.c_in / G, cout_g = s.c_out / G, kk = s.kh * s.kw;
    const int64_t hw = s.h_in * s.w_in;
    const at::Tensor x = channel_major(x4, acc_type);                         // [C_in, N*H*W]
    const at::Tensor w = weight.to(acc_type).contiguous().view({s.c_in, cout_g * kk});  // [C_in, C_out/g*kk]
    const at::Tensor b = has_bias ? bias->to(acc_type).contiguous() : at::Tensor();
    const int64_t chunk = batch_chunk(s);
    at::Tensor cols = at::empty({G, cout_g * kk, chunk * hw}, out.options());
    for (int64_t n0 = 0; n0 < s.batch; n0 += chunk) {
      const int64_t nb = std::min(chunk, s.batch - n0);
      at::Tensor c = nb == chunk ? cols : at::empty({G, cout_g * kk, nb * hw}, out.options());
      for (int64_t g = 0; g < G; ++g) {
        at::Tensor cg = c[g];
        at::mm_out(cg, w.narrow(0, g * cin_g, cin_g).t(), x.narrow(0, g * cin_g, cin_g).narrow(1, n0 * hw, nb * hw));
      }
      AT_DISPATCH_FLOATING_TYPES(acc_type, "conv_transpose2d_col2im", [&] {
        dispatch_stride(s.sw, [&](auto st) {
          col2im<decltype(st)::value, scalar_t>(c.data_ptr<scalar_t>(), has_bias ? b.data_ptr<scalar_t>() : nullptr,
                                                s, nb, out.data_ptr<scalar_t>() + n0 * s.c_out * s.h_out * s.w_out);
        });
      });
    }
  }
  if (acc_type != input.scalar_type()) out = out.to(input.scalar_type());
  return s.unbatched ? out.squeeze(0) : out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_transpose2d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef output_padding, int64_t groups, at::IntArrayRef dilation,
    std::array<bool, 3> output_mask) {
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
  const auto acc_type = accumulate_type_of(input.scalar_type());
  const auto acc_opts = input.options().dtype(acc_type);
  const int64_t G = s.groups, cin_g = s.c_in / G, cout_g = s.c_out / G, kk = s.kh * s.kw;
  const int64_t hw = s.h_in * s.w_in, plane_size = s.h_out * s.w_out;
  const bool need_input = output_mask[0], need_weight = output_mask[1], need_bias = output_mask[2];

  const at::Tensor go = (s.unbatched ? grad_output.unsqueeze(0) : grad_output).to(acc_type).contiguous();
  at::Tensor grad_input_cm = need_input ? at::empty({s.c_in, s.batch * hw}, acc_opts) : at::Tensor();
  at::Tensor grad_weight = need_weight ? at::zeros({s.c_in, cout_g * kk}, acc_opts) : at::Tensor();
  at::Tensor grad_bias = need_bias ? at::empty({s.c_out}, acc_opts) : at::Tensor();

  if ((need_input || need_weight) && s.batch > 0 && s.c_out > 0) {
    const at::Tensor w = weight.to(acc_type).contiguous().view({s.c_in, cout_g * kk});
    const at::Tensor x = need_weight ? channel_major(input.dim() == 3 ? input.unsqueeze(0) : input, acc_type)
                                     : at::Tensor();
    const int64_t chunk = batch_chunk(s);
    at::Tensor cols = at::empty({G, cout_g * kk, chunk * hw}, acc_opts);
    for (int64_t n0 = 0; n0 < s.batch; n0 += chunk) {
      const int64_t nb = std::min(chunk, s.batch - n0);
      at::Tensor c = nb == chunk ? cols : at::empty({G, cout_g * kk, nb * hw}, acc_opts);
      AT_DISPATCH_FLOATING_TYPES(acc_type, "conv_transpose2d_im2col", [&] {
        dispatch_stride(s.sw, [&](auto st) {
          im2col<decltype(st)::value, scalar_t>(go.data_ptr<scalar_t>() + n0 * s.c_out * plane_size, s, nb,
                                                c.data_ptr<scalar_t>());
        });
      });
      for (int64_t g = 0; g < G; ++g) {
        if (need_input) {
          at::Tensor gi = grad_input_cm.narrow(0, g * cin_g, cin_g).narrow(1, n0 * hw, nb * hw);
          at::mm_out(gi, w.narrow(0, g * cin_g, cin_g), c[g]);
        }
        if (need_weight) {
          at::Tensor gw = grad_weight.narrow(0, g * cin_g, cin_g);
          gw.addmm_(x.narrow(0, g * cin_g, cin_g).narrow(1, n0 * hw, nb * hw), c[g].t());
        }
      }
    }
  } else if (need_input) {
    grad_input_cm.zero_();
  }

  if (need_bias) {
    AT_DISPATCH_FLOATING_TYPES(acc_type, "conv_transpose2d_grad_bias", [&] {
      const scalar_t* g = go.data_ptr<scalar_t>();
      scalar_t* gb = grad_bias.data_ptr<scalar_t>();
      at::parallel_for(0, s.c_out, grain_for(s.batch * plane_size), [&](int64_t begin, int64_t end) {
        for (int64_t co = begin; co < end; ++co) {
          double total = 0;
          for (int64_t n = 0; n < s.batch; ++n) {
            const scalar_t* p = g + (n * s.c_out + co) * plane_size;
            // Eight independent lanes (a fixed order, so deterministic) let the loop vectorise.
            scalar_t lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            int64_t i = 0;
            for (; i + 8 <= plane_size; i += 8)
              for (int l = 0; l < 8; ++l) lanes[l] += p[i + l];
            for (; i < plane_size; ++i) lanes[0] += p[i];
            for (int l = 0; l < 8; ++l) total += static_cast<double>(lanes[l]);
          }
          gb[co] = static_cast<scalar_t>(total);
        }
      });
    });
  }

  const auto dtype = input.scalar_type();
  at::Tensor gi_out = at::empty({0}, input.options()), gw_out = at::empty({0}, input.options()),
             gb_out = at::empty({0}, input.options());
  if (need_input) {
    at::Tensor gi = grad_input_cm.view({s.c_in, s.batch, s.h_in, s.w_in}).permute({1, 0, 2, 3}).to(dtype).contiguous();
    gi_out = s.unbatched ? gi.squeeze(0) : gi;
  }
  if (need_weight) gw_out = grad_weight.view(weight.sizes()).to(dtype);
  if (need_bias) gb_out = grad_bias.to(dtype);
  return {gi_out, gw_out, gb_out};
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CPU, m) {
  m.impl("conv_transpose2d", &pydetops::conv_transpose2d_cpu);
  m.impl("_conv_transpose2d_backward", &pydetops::conv_transpose2d_backward_cpu);
}
