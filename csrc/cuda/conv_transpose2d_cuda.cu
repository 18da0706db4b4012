// CUDA path of conv_transpose2d and its backward: GEMMs through at::mm on the
// CUDA tensors (cuBLAS via ATen), with our own col2im / im2col kernels.
//
// Columns are channel-major here: [C_out * kH * kW, nb * H * W] for a chunk of
// nb images (row (co, ki, kj), column (image, h, w)). Per group g:
//   forward   cols_g = weight_g^T [C_out/g*kk, C_in/g] @ x_g [C_in/g, nb*H*W]
//   col2im    one thread per output element GATHERS its taps from the columns
//             (conv_transpose_source: no atomics, a fixed order, deterministic)
//             and adds the bias;
//   backward  im2col (one thread per columns element) gathers grad_output,
//             grad_input_g = weight_g @ cols_g, grad_weight_g += x_g @ cols_g^T
//             (chunks in order), grad_bias = grad_output summed over (N, H, W).
// Everything runs in float32 (float64 for float64 inputs); the columns of a
// chunk are kept within kColumnsBudget elements.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "common/checks.h"
#include "common/conv_transpose_math.h"
#include "ops/conv_transpose2d.h"

namespace pydetops {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kColumnsBudget = int64_t(1) << 26;  // elements of one chunk's columns (256 MiB in float32)

inline unsigned int blocks_for(int64_t n, int threads) {
  return static_cast<unsigned int>(std::min<int64_t>(std::max<int64_t>(1, (n + threads - 1) / threads), 1 << 30));
}

// Shape scalars the kernels need (by value).
struct Geom {
  int64_t c_out, h_in, w_in, kh, kw, h_out, w_out, sh, sw, ph, pw, dh, dw;
};

Geom geom_of(const ConvTranspose2dShape& s) {
  return Geom{s.c_out, s.h_in, s.w_in, s.kh, s.kw, s.h_out, s.w_out, s.sh, s.sw, s.ph, s.pw, s.dh, s.dw};
}

// out[n, co, oh, ow] (nb images of the chunk, contiguous) = bias[co] + the taps'
// columns; cols: [c_out * kk, nb * hw].
template <typename acc_t>
__global__ void col2im_kernel(const acc_t* __restrict__ cols, const acc_t* __restrict__ bias, Geom g, int64_t nb,
                              acc_t* __restrict__ out) {
  const int64_t hw = g.h_in * g.w_in, plane = g.h_out * g.w_out, ncols = nb * hw;
  const int64_t total = nb * g.c_out * plane;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t ow = e % g.w_out;
    const int64_t oh = (e / g.w_out) % g.h_out;
    const int64_t co = (e / plane) % g.c_out;
    const int64_t n = e / (plane * g.c_out);
    acc_t v = bias != nullptr ? bias[co] : acc_t(0);
    for (int64_t ki = 0; ki < g.kh; ++ki) {
      int64_t ih;
      if (!conv_transpose_source(oh, ki, g.h_in, g.sh, g.ph, g.dh, &ih)) continue;
      for (int64_t kj = 0; kj < g.kw; ++kj) {
        int64_t iw;
        if (!conv_transpose_source(ow, kj, g.w_in, g.sw, g.pw, g.dw, &iw)) continue;
        v += cols[((co * g.kh + ki) * g.kw + kj) * ncols + n * hw + ih * g.w_in + iw];
      }
    }
    out[e] = v;
  }
}

// cols[(co, ki, kj), (n, ih, iw)] = grad_out[n, co, target(ih, ki), target(iw, kj)] or 0.
template <typename acc_t>
__global__ void im2col_kernel(const acc_t* __restrict__ go, Geom g, int64_t nb, acc_t* __restrict__ cols) {
  const int64_t hw = g.h_in * g.w_in, ncols = nb * hw;
  const int64_t total = g.c_out * g.kh * g.kw * ncols;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t col = e % ncols, row = e / ncols;
    const int64_t kj = row % g.kw, ki = (row / g.kw) % g.kh, co = row / (g.kw * g.kh);
    const int64_t iw = col % g.w_in, ih = (col / g.w_in) % g.h_in, n = col / hw;
    const int64_t oh = conv_transpose_target(ih, ki, g.sh, g.ph, g.dh);
    const int64_t ow = conv_transpose_target(iw, kj, g.sw, g.pw, g.dw);
    const bool in = oh >= 0 && oh < g.h_out && ow >= 0 && ow < g.w_out;
    cols[e] = in ? go[((n * g.c_out + co) * g.h_out + oh) * g.w_out + ow] : acc_t(0);
  }
}

// Images per chunk: as many as fit the columns budget.
int64_t chunk_images(const ConvTranspose2dShape& s) {
  const int64_t per_image = std::max<int64_t>(1, s.c_out * s.kh * s.kw * s.h_in * s.w_in);
  return std::max<int64_t>(1, std::min<int64_t>(std::max<int64_t>(s.batch, 1), kColumnsBudget / per_image));
}

at::Tensor conv_transpose2d_cuda(const at::Tensor& input, const at::Tensor& weight,
                                 const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef output_padding, int64_t groups,
                                 at::IntArrayRef dilation) {
  const ConvTranspose2dShape s =
      check_conv_transpose2d_args(input, weight, bias, stride, padding, output_padding, groups, dilation);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto acc_type = accumulate_type_of(input.scalar_type());
  const at::Tensor x4 = s.unbatched ? input.unsqueeze(0) : input;
  at::Tensor out = at::empty({s.batch, s.c_out, s.h_out, s.w_out}, input.options().dtype(acc_type));
  const bool has_bias = bias.has_value() && bias->defined();
  if (out.numel() > 0) {
    const int64_t G = s.groups, cin_g = s.c_in / G, cout_g = s.c_out / G, kk = s.kh * s.kw;
    const int64_t hw = s.h_in * s.w_in, out_image = s.c_out * s.h_out * s.w_out;
    const at::Tensor w = weight.to(acc_type).contiguous().view({s.c_in, cout_g * kk});  // [C_in, C_out/g*kk]
    const at::Tensor b = has_bias ? bias->to(acc_type).contiguous() : at::Tensor();
    // Channel-major input [C_in, N*H*W] (one copy).
    const at::Tensor x = x4.to(acc_type).permute({1, 0, 2, 3}).contiguous().view({s.c_in, s.batch * hw});
    const int64_t chunk = chunk_images(s);
    const Geom geo = geom_of(s);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    at::Tensor cols = at::empty({s.c_out * kk, chunk * hw}, out.options());
    for (int64_t n0 = 0; n0 < s.batch; n0 += chunk) {
      const int64_t nb = std::min(chunk, s.batch - n0);
      at::Tensor c = nb == chunk ? cols : at::empty({s.c_out * kk, nb * hw}, out.options());
      if (s.c_in > 0) {
        for (int64_t g = 0; g < G; ++g) {
          at::Tensor cg = c.narrow(0, g * cout_g * kk, cout_g * kk);  // contiguous rows
          at::mm_out(cg, w.narrow(0, g * cin_g, cin_g).t(), x.narrow(0, g * cin_g, cin_g).narrow(1, n0 * hw, nb * hw));
        }
      } else {
        c.zero_();
      }
      AT_DISPATCH_FLOATING_TYPES(acc_type, "conv_transpose2d_col2im_cuda", [&] {
        col2im_kernel<scalar_t><<<blocks_for(nb * out_image, kThreads), kThreads, 0, stream>>>(
            c.data_ptr<scalar_t>(), has_bias ? b.data_ptr<scalar_t>() : nullptr, geo, nb,
            out.data_ptr<scalar_t>() + n0 * out_image);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
  }
  if (acc_type != input.scalar_type()) out = out.to(input.scalar_type());
  return s.unbatched ? out.squeeze(0) : out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_transpose2d_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef output_padding, int64_t groups, at::IntArrayRef dilation,
    std::array<bool, 3> output_mask) {
  const ConvTranspose2dShape s = check_conv_transpose2d_backward_args(grad_output, input, weight, stride, padding,
                                                                     output_padding, groups, dilation);
  check_same_device(grad_output, "grad_output", input, "input");
  const c10::cuda::CUDAGuard guard(input.device());
  const auto acc_type = accumulate_type_of(input.scalar_type());
  const auto acc_opts = input.options().dtype(acc_type);
  const int64_t G = s.groups, cin_g = s.c_in / G, cout_g = s.c_out / G, kk = s.kh * s.kw;
  const int64_t hw = s.h_in * s.w_in;
  const bool need_input = output_mask[0], need_weight = output_mask[1], need_bias = output_mask[2];

  const at::Tensor go = (s.unbatched ? grad_output.unsqueeze(0) : grad_output).to(acc_type).contiguous();
  at::Tensor grad_input_cm = need_input ? at::zeros({s.c_in, s.batch * hw}, acc_opts) : at::Tensor();
  at::Tensor grad_weight = need_weight ? at::zeros({s.c_in, cout_g * kk}, acc_opts) : at::Tensor();

  if ((need_input || need_weight) && s.batch > 0 && s.c_out > 0 && s.c_in > 0 && hw > 0) {
    const at::Tensor w = weight.to(acc_type).contiguous().view({s.c_in, cout_g * kk});
    const at::Tensor x4 = s.unbatched ? input.unsqueeze(0) : input;
    const at::Tensor x =
        need_weight ? x4.to(acc_type).permute({1, 0, 2, 3}).contiguous().view({s.c_in, s.batch * hw}) : at::Tensor();
    const int64_t chunk = chunk_images(s);
    const Geom geo = geom_of(s);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const int64_t out_image = s.c_out * s.h_out * s.w_out;
    at::Tensor cols = at::empty({s.c_out * kk, chunk * hw}, acc_opts);
    for (int64_t n0 = 0; n0 < s.batch; n0 += chunk) {
      const int64_t nb = std::min(chunk, s.batch - n0);
      at::Tensor c = nb == chunk ? cols : at::empty({s.c_out * kk, nb * hw}, acc_opts);
      AT_DISPATCH_FLOATING_TYPES(acc_type, "conv_transpose2d_im2col_cuda", [&] {
        im2col_kernel<scalar_t><<<blocks_for(c.numel(), kThreads), kThreads, 0, stream>>>(
            go.data_ptr<scalar_t>() + n0 * out_image, geo, nb, c.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
      for (int64_t g = 0; g < G; ++g) {
        const at::Tensor cg = c.narrow(0, g * cout_g * kk, cout_g * kk);  // [C_out/g*kk, nb*hw]
        if (need_input) {
          at::Tensor gi = grad_input_cm.narrow(0, g * cin_g, cin_g).narrow(1, n0 * hw, nb * hw);
          gi.copy_(at::mm(w.narrow(0, g * cin_g, cin_g), cg));
        }
        if (need_weight) {
          at::Tensor gw = grad_weight.narrow(0, g * cin_g, cin_g);
          gw.addmm_(x.narrow(0, g * cin_g, cin_g).narrow(1, n0 * hw, nb * hw), cg.t());
        }
      }
    }
  }
  at::Tensor grad_bias;
  if (need_bias) {
    grad_bias = s.batch > 0 ? go.sum(at::IntArrayRef{0, 2, 3}) : at::zeros({s.c_out}, acc_opts);
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

TORCH_LIBRARY_IMPL(pydetops, CUDA, m) {
  m.impl("conv_transpose2d", &pydetops::conv_transpose2d_cuda);
  m.impl("_conv_transpose2d_backward", &pydetops::conv_transpose2d_backward_cuda);
}
