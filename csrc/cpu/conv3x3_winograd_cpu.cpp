// CPU kernel of conv3x3_winograd: Winograd's minimal filtering F(2x2, 3x3)
// (Lavin & Gray 2015) on channels-last (NHWC) data.
//
// The output is cut into 2x2 tiles; tile t reads the 4x4 input patch d_t
// around it (zeros outside the image: padding 1). Per tile and channel
//   V = B^T d B,   M[e] = sum_c V[e][c] U[e][c][k]  (16 GEMMs),   Y = A^T M A
// with U = G g G^T precomputed per layer, so a 2x2 output costs 16 multiply-
// adds per (c, k) instead of 36: 2.25x fewer than the direct convolution.
// The transforms use only additions (B, A) and are vectorised over channels
// (NHWC keeps a pixel's channels contiguous).
//
// Tiles are processed in blocks of a fixed size: each block's V (16 x tiles x C)
// and M (16 x tiles x K) stay in the cache, and its 16 GEMMs run as
// one single-threaded batched matmul inside at::parallel_for (blocks are the
// parallel items). The block size depends only on the shapes, so results are
// the same for any thread count.
//
// Rounding: B and A have entries 0, +-1; G has 0, +-1/2, 1 (transformed in
// float64 once). Each output is a different sum than the direct convolution's
// (typically within a few ulps of the float32 result times the sum of |terms|).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/checks.h"
#include "cpu/parallel_grain.h"
#include "ops/conv3x3_winograd.h"

namespace pydetops {
namespace {

// Tiles per block: V and M of one block about 4 MiB together (64 tiles at
// 512 channels, 256 at 128). Each block's GEMMs stream all of U (16 C K
// values) once, so small blocks make them bound by reading U and by the
// GEMMs' fixed costs; large ones spill V and M from the caches. Measured on a
// 2 MiB-L2 Xeon, 1 thread (benchmarks/NOTES.md): 0.5 MiB ran 0.8-1.1x the
// direct convolution, 1 MiB 1.1-1.4x, 2 MiB 1.5x, 4 MiB 1.5-1.6x, 8 MiB 1.4-1.7x.
int64_t tiles_per_block(int64_t C, int64_t K, int64_t elem_size) {
  const int64_t per_tile = 16 * (C + K) * elem_size;
  return std::clamp<int64_t>((int64_t(4) << 20) / per_tile, 32, 1024);
}

template <typename scalar_t>
void input_transform(const scalar_t* x, int64_t H, int64_t W, int64_t C, int64_t y0, int64_t x0, scalar_t* v,
                     int64_t stride_e) {
  // v[e * stride_e + c] for e = 4 * i + j: (B^T d B)[i][j] of the patch rows y0..y0+3, cols x0..x0+3.
  using Vec = at::vec::Vectorized<scalar_t>;
  const scalar_t* rows[4];
  bool row_in[4], col_in[4];
  for (int i = 0; i < 4; ++i) {
    row_in[i] = y0 + i >= 0 && y0 + i < H;
    col_in[i] = x0 + i >= 0 && x0 + i < W;
    rows[i] = row_in[i] ? x + (y0 + i) * W * C : nullptr;
  }
  int64_t c = 0;
  auto body = [&](auto load, auto store, int64_t c0) {
    Vec d[4][4];
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j)
        d[i][j] = (row_in[i] && col_in[j]) ? load(rows[i] + (x0 + j) * C + c0) : Vec(scalar_t(0));
    Vec t[4][4];  // B^T d: rows
    for (int j = 0; j < 4; ++j) {
      t[0][j] = d[0][j] - d[2][j];
      t[1][j] = d[1][j] + d[2][j];
      t[2][j] = d[2][j] - d[1][j];
      t[3][j] = d[1][j] - d[3][j];
    }
    for (int i = 0; i < 4; ++i) {  // (B^T d) B: columns
      store(v + (4 * i + 0) * stride_e + c0, t[i][0] - t[i][2]);
      store(v + (4 * i + 1) * stride_e + c0, t[i][1] + t[i][2]);
      store(v + (4 * i + 2) * stride_e + c0, t[i][2] - t[i][1]);
      store(v + (4 * i + 3) * stride_e + c0, t[i][1] - t[i][3]);
    }
  };
  for (; c + Vec::size() <= C; c += Vec::size())
    body([](const scalar_t* p) { return Vec::loadu(p); }, [](scalar_t* p, Vec a) { a.store(p); }, c);
  if (c < C) {
    const int64_t n = C - c;
    body([n](const scalar_t* p) { return Vec::loadu(p, n); }, [n](scalar_t* p, Vec a) { a.store(p, n); }, c);
  }
}

template <typename scalar_t>
void output_transform(const scalar_t* m, int64_t stride_e, int64_t K, const scalar_t* bias, const scalar_t* residual,
                      bool relu, scalar_t* y, int64_t H, int64_t W, int64_t oy, int64_t ox) {
  // Y = A^T M A (2x2) + bias (+ residual), ReLU; written where inside the image.
  using Vec = at::vec::Vectorized<scalar_t>;
  const bool row1 = oy + 1 < H, col1 = ox + 1 < W;
  auto body = [&](auto load, auto store, int64_t k) {
    Vec s[2][4];
    for (int j = 0; j < 4; ++j) {
      const Vec m0 = load(m + (0 + j) * stride_e + k), m1 = load(m + (4 + j) * stride_e + k);
      const Vec m2 = load(m + (8 + j) * stride_e + k), m3 = load(m + (12 + j) * stride_e + k);
      s[0][j] = m0 + m1 + m2;
      s[1][j] = m1 - m2 - m3;
    }
    const Vec b = bias ? load(bias + k) : Vec(scalar_t(0));
    for (int i = 0; i < 2; ++i) {
      if (i == 1 && !row1) break;
      for (int j = 0; j < 2; ++j) {
        if (j == 1 && !col1) break;
        Vec out = (j == 0 ? s[i][0] + s[i][1] + s[i][2] : s[i][1] - s[i][2] - s[i][3]) + b;
        const int64_t offset = ((oy + i) * W + (ox + j)) * K + k;
        if (residual) out = out + load(residual + offset);
        if (relu) out = at::vec::clamp_min(out, Vec(scalar_t(0)));
        store(y + offset, out);
      }
    }
  };
  int64_t k = 0;
  for (; k + Vec::size() <= K; k += Vec::size())
    body([](const scalar_t* p) { return Vec::loadu(p); }, [](scalar_t* p, Vec a) { a.store(p); }, k);
  if (k < K) {
    const int64_t n = K - k;
    body([n](const scalar_t* p) { return Vec::loadu(p, n); }, [n](scalar_t* p, Vec a) { a.store(p, n); }, k);
  }
}

at::Tensor conv3x3_winograd_cpu(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                                const c10::optional<at::Tensor>& residual, c10::string_view activation) {
  check_conv3x3_winograd_args(input, weight, bias, residual, activation);
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3), K = weight.size(2);
  const auto nhwc = at::MemoryFormat::ChannelsLast;
  at::Tensor output = at::empty({N, K, H, W}, input.options().memory_format(nhwc));
  if (output.numel() == 0) return output;
  if (C == 0) {  // an empty sum: bias (+ residual), activation
    output.zero_();
    if (bias.has_value() && bias->defined()) output.add_(bias->view({1, K, 1, 1}));
    if (residual.has_value() && residual->defined()) output.add_(*residual);
    if (activation == "relu") output.clamp_min_(0);
    return output;
  }
  const at::Tensor x = input.contiguous(nhwc);
  const at::Tensor u = weight.contiguous();
  const at::Tensor b = (bias.has_value() && bias->defined()) ? bias->contiguous() : at::Tensor();
  const at::Tensor r = (residual.has_value() && residual->defined()) ? residual->contiguous(nhwc) : at::Tensor();
  const bool relu = activation == "relu";

  const int64_t tiles_h = (H + 1) / 2, tiles_w = (W + 1) / 2;
  const int64_t tiles = N * tiles_h * tiles_w;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "conv3x3_winograd_cpu", [&] {
    const int64_t block = tiles_per_block(C, K, sizeof(scalar_t));
    const int64_t blocks = (tiles + block - 1) / block;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* bp = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* rp = r.defined() ? r.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* yp = output.mutable_data_ptr<scalar_t>();
    const double work = static_cast<double>(tiles) * 16.0 * static_cast<double>(C) * static_cast<double>(K);
    at::parallel_for(0, blocks, cpu::grain_for_total(blocks, work), [&](int64_t begin, int64_t end) {
      at::Tensor v = at::empty({16, block, C}, x.options().memory_format(at::MemoryFormat::Contiguous));
      at::Tensor m = at::empty({16, block, K}, x.options().memory_format(at::MemoryFormat::Contiguous));
      for (int64_t blk = begin; blk < end; ++blk) {
        const int64_t t0 = blk * block, nt = std::min(block, tiles - t0);
        scalar_t* vp = v.mutable_data_ptr<scalar_t>();
        for (int64_t i = 0; i < nt; ++i) {
          const int64_t t = t0 + i, n = t / (tiles_h * tiles_w), rem = t % (tiles_h * tiles_w);
          const int64_t ty = rem / tiles_w, tx = rem % tiles_w;
          input_transform(xp + n * H * W * C, H, W, C, 2 * ty - 1, 2 * tx - 1, vp + i * C, block * C);
        }
        at::Tensor vv = v.narrow(1, 0, nt), mv = m.narrow(1, 0, nt);
        at::bmm_out(mv, vv, u);
        const scalar_t* mp = m.const_data_ptr<scalar_t>();
        for (int64_t i = 0; i < nt; ++i) {
          const int64_t t = t0 + i, n = t / (tiles_h * tiles_w), rem = t % (tiles_h * tiles_w);
          const int64_t ty = rem / tiles_w, tx = rem % tiles_w;
          output_transform(mp + i * K, block * K, K, bp, rp ? rp + n * H * W * K : nullptr, relu,
                           yp + n * H * W * K, H, W, 2 * ty, 2 * tx);
        }
      }
    });
  });
  return output;
}

}  // namespace

TORCH_LIBRARY_IMPL(pydetops, CPU, m) { m.impl("conv3x3_winograd", &conv3x3_winograd_cpu); }

}  // namespace pydetops
