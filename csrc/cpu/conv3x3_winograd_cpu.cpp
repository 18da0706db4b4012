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
#include <torch/library.h>

#include <algorithm>
#include <cstring>
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

// The transforms run over the channels (unit stride in NHWC) in GCC vector
// extensions of 64 bytes, in functions compiled for AVX-512, AVX2 and the
// baseline ISA (the loader picks what the CPU has; the baseline splits a
// vector into SSE registers). GCC does not vectorise the plain loops itself
// (32 data streams per iteration).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define PYDETOPS_WINOGRAD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define PYDETOPS_WINOGRAD_CLONES
#endif
#if defined(__GNUC__)
#define PYDETOPS_INLINE inline __attribute__((always_inline))
#else
#define PYDETOPS_INLINE inline
#endif

template <typename T>
struct Simd;
#if defined(__GNUC__)
template <>
struct Simd<float> {
  typedef float V __attribute__((vector_size(64)));
};
template <>
struct Simd<double> {
  typedef double V __attribute__((vector_size(64)));
};
#else
template <>
struct Simd<float> {
  typedef float V;
};
template <>
struct Simd<double> {
  typedef double V;
};
#endif

template <typename V, typename T>
PYDETOPS_INLINE V load(const T* p) {
  V x;
  std::memcpy(&x, p, sizeof(V));
  return x;
}

template <typename V, typename T>
PYDETOPS_INLINE void store(T* p, const V& x) {
  std::memcpy(p, &x, sizeof(V));
}

// v[e * stride_e + c .. + lanes] = (B^T d B)[e], e = 4 i + j, d[i][j] = src[4 i + j][c ..] (a pixel's
// channels in the image, or zeros for the padding). V is a vector of lanes values or one T.
template <typename V, typename T>
PYDETOPS_INLINE void input_step(const T* const* src, int64_t c, T* v, int64_t stride_e) {
  V t[4][4];  // B^T d: rows combined, per column j
  for (int j = 0; j < 4; ++j) {
    const V d0 = load<V>(src[j] + c), d1 = load<V>(src[4 + j] + c);
    const V d2 = load<V>(src[8 + j] + c), d3 = load<V>(src[12 + j] + c);
    t[0][j] = d0 - d2;
    t[1][j] = d1 + d2;
    t[2][j] = d2 - d1;
    t[3][j] = d1 - d3;
  }
  for (int i = 0; i < 4; ++i) {  // (B^T d) B: columns combined
    store(v + (4 * i + 0) * stride_e + c, t[i][0] - t[i][2]);
    store(v + (4 * i + 1) * stride_e + c, t[i][1] + t[i][2]);
    store(v + (4 * i + 2) * stride_e + c, t[i][2] - t[i][1]);
    store(v + (4 * i + 3) * stride_e + c, t[i][1] - t[i][3]);
  }
}

template <typename T>
PYDETOPS_WINOGRAD_CLONES void input_transform(const T* const* src, int64_t C, T* v, int64_t stride_e) {
  using V = typename Simd<T>::V;
  constexpr int64_t lanes = sizeof(V) / sizeof(T);
  int64_t c = 0;
  for (; c + lanes <= C; c += lanes) input_step<V>(src, c, v, stride_e);
  for (; c < C; ++c) input_step<T>(src, c, v, stride_e);
}

// dst[q][k ..] = act((A^T M A)[q] + bias[k ..] + res[q][k ..]) for the 2x2 outputs q = 2 i + j, where
// M[e] = m[e * stride_e + k ..]. dst / res point into the output / residual, or to scratch and
// zeros where the tile crosses the image's edge or there is no residual.
template <typename V, bool kRelu, typename T>
PYDETOPS_INLINE void output_step(const T* m, int64_t stride_e, int64_t k, const T* bias, const T* const* res,
                                 T* const* dst) {
  V u[4], w[4];  // A^T M: rows combined, per column j
  for (int j = 0; j < 4; ++j) {
    const V m0 = load<V>(m + j * stride_e + k), m1 = load<V>(m + (4 + j) * stride_e + k);
    const V m2 = load<V>(m + (8 + j) * stride_e + k), m3 = load<V>(m + (12 + j) * stride_e + k);
    u[j] = m0 + m1 + m2;
    w[j] = m1 - m2 - m3;
  }
  const V b = load<V>(bias + k);
  V y[4] = {u[0] + u[1] + u[2], u[1] - u[2] - u[3], w[0] + w[1] + w[2], w[1] - w[2] - w[3]};
  for (int q = 0; q < 4; ++q) {
    V out = y[q] + b + load<V>(res[q] + k);
    if (kRelu) {
      const V zero{};
      out = out < zero ? zero : out;  // NaN stays NaN (the comparison is false), as torch.relu
    }
    store(dst[q] + k, out);
  }
}

template <typename T, bool kRelu>
PYDETOPS_WINOGRAD_CLONES void output_transform(const T* m, int64_t stride_e, int64_t K, const T* bias,
                                               const T* const* res, T* const* dst) {
  using V = typename Simd<T>::V;
  constexpr int64_t lanes = sizeof(V) / sizeof(T);
  int64_t k = 0;
  for (; k + lanes <= K; k += lanes) output_step<V, kRelu>(m, stride_e, k, bias, res, dst);
  for (; k < K; ++k) output_step<T, kRelu>(m, stride_e, k, bias, res, dst);
}

// u[(4a + b) C K + k] = (G g G^T)[a][b] for the K filters g of one input channel, given as their
// nine taps g[(3 i + j) K + k]. G's rows are (1, 0, 0), (1/2, 1/2, 1/2), (1/2, -1/2, 1/2), (0, 0, 1).
template <typename V, typename T>
PYDETOPS_INLINE void weight_step(const T* g, int64_t K, int64_t CK, int64_t k, T* u) {
  const V half = load<V>(g + k) * T(0) + T(0.5);  // a vector (or scalar) of 1/2
  V t[4][3];  // G g
  for (int j = 0; j < 3; ++j) {
    const V g0 = load<V>(g + j * K + k), g1 = load<V>(g + (3 + j) * K + k), g2 = load<V>(g + (6 + j) * K + k);
    t[0][j] = g0;
    t[1][j] = half * (g0 + g1 + g2);
    t[2][j] = half * (g0 - g1 + g2);
    t[3][j] = g2;
  }
  for (int a = 0; a < 4; ++a) {  // (G g) G^T
    store(u + (4 * a + 0) * CK + k, t[a][0]);
    store(u + (4 * a + 1) * CK + k, V(half * (t[a][0] + t[a][1] + t[a][2])));
    store(u + (4 * a + 2) * CK + k, V(half * (t[a][0] - t[a][1] + t[a][2])));
    store(u + (4 * a + 3) * CK + k, t[a][2]);
  }
}

template <typename T>
PYDETOPS_WINOGRAD_CLONES void weight_transform(const T* g, int64_t K, int64_t CK, T* u) {
  using V = typename Simd<T>::V;
  constexpr int64_t lanes = sizeof(V) / sizeof(T);
  int64_t k = 0;
  for (; k + lanes <= K; k += lanes) weight_step<V>(g, K, CK, k, u);
  for (; k < K; ++k) weight_step<T>(g, K, CK, k, u);
}

at::Tensor winograd_transform_weight(const at::Tensor& weight) {
  // Conv2d filters Tensor[K, C, 3, 3] -> U = G g G^T, Tensor[16, C, K], in weight's dtype. The
  // filters are first laid out [C, 3, 3, K] so that the transform reads and writes unit-stride rows
  // of K. For training the filters change at every step: this runs once per forward and once per
  // backward of every layer (2.4 M weights of a 512-channel layer: a few ms).
  const int64_t K = weight.size(0), C = weight.size(1);
  const at::Tensor w = weight.permute({1, 2, 3, 0}).contiguous();  // [C, 3, 3, K]
  at::Tensor u = at::empty({16, C, K}, w.options());
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "winograd_transform_weight", [&] {
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    scalar_t* up = u.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, C, std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1)), [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) weight_transform<scalar_t>(wp + c * 9 * K, K, C * K, up + c * K);
    });
  });
  return u;
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
      // zeros (padding, no bias, no residual) and scratch (outputs outside the image)
      std::vector<scalar_t> zeros(static_cast<size_t>(std::max(C, K)), scalar_t(0));
      std::vector<scalar_t> scratch(static_cast<size_t>(K));
      const scalar_t* bias_or_zeros = bp ? bp : zeros.data();
      for (int64_t blk = begin; blk < end; ++blk) {
        const int64_t t0 = blk * block, nt = std::min(block, tiles - t0);
        scalar_t* vp = v.mutable_data_ptr<scalar_t>();
        for (int64_t i = 0; i < nt; ++i) {
          const int64_t t = t0 + i, n = t / (tiles_h * tiles_w), rem = t % (tiles_h * tiles_w);
          const int64_t iy = 2 * (rem / tiles_w) - 1, ix = 2 * (rem % tiles_w) - 1;  // patch origin
          const scalar_t* src[16];
          for (int a = 0; a < 4; ++a)
            for (int c = 0; c < 4; ++c) {
              const bool inside = iy + a >= 0 && iy + a < H && ix + c >= 0 && ix + c < W;
              src[4 * a + c] = inside ? xp + ((n * H + iy + a) * W + ix + c) * C : zeros.data();
            }
          input_transform<scalar_t>(src, C, vp + i * C, block * C);
        }
        at::Tensor vv = v.narrow(1, 0, nt), mv = m.narrow(1, 0, nt);
        at::bmm_out(mv, vv, u);
        const scalar_t* mp = m.const_data_ptr<scalar_t>();
        for (int64_t i = 0; i < nt; ++i) {
          const int64_t t = t0 + i, n = t / (tiles_h * tiles_w), rem = t % (tiles_h * tiles_w);
          const int64_t oy = 2 * (rem / tiles_w), ox = 2 * (rem % tiles_w);
          scalar_t* dst[4];
          const scalar_t* res[4];
          for (int q = 0; q < 4; ++q) {
            const int64_t yy = oy + q / 2, xx = ox + q % 2;
            const bool inside = yy < H && xx < W;
            const int64_t offset = ((n * H + yy) * W + xx) * K;
            dst[q] = inside ? yp + offset : scratch.data();
            res[q] = (inside && rp) ? rp + offset : zeros.data();
          }
          if (relu)
            output_transform<scalar_t, true>(mp + i * K, block * K, K, bias_or_zeros, res, dst);
          else
            output_transform<scalar_t, false>(mp + i * K, block * K, K, bias_or_zeros, res, dst);
        }
      }
    });
  });
  return output;
}

at::Tensor winograd_conv2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                               const c10::optional<at::Tensor>& bias) {
  check_winograd_conv2d_args(input, weight, bias);
  return conv3x3_winograd_cpu(input, winograd_transform_weight(weight), bias, c10::nullopt, "none");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> winograd_conv2d_backward_cpu(const at::Tensor& grad_output,
                                                                            const at::Tensor& input,
                                                                            const at::Tensor& weight,
                                                                            std::array<bool, 3> output_mask) {
  check_winograd_conv2d_args(input, weight, c10::nullopt);
  TORCH_CHECK_VALUE(grad_output.dim() == 4 && grad_output.size(0) == input.size(0) &&
                        grad_output.size(1) == weight.size(0) && grad_output.size(2) == input.size(2) &&
                        grad_output.size(3) == input.size(3),
                    "grad_output must be a Tensor[", input.size(0), ", ", weight.size(0), ", ", input.size(2), ", ",
                    input.size(3), "], got shape ", grad_output.sizes());
  TORCH_CHECK_TYPE(grad_output.scalar_type() == input.scalar_type(), "grad_output must have input's dtype");
  at::Tensor grad_input, grad_weight, grad_bias;
  if (output_mask[0]) {
    // d conv(x, w) / dx applied to g = conv(g, w flipped in space, in/out channels swapped)
    const at::Tensor flipped = weight.flip({2, 3}).transpose(0, 1);
    grad_input = conv3x3_winograd_cpu(grad_output, winograd_transform_weight(flipped), c10::nullopt, c10::nullopt,
                                      "none");
  }
  if (output_mask[1] || output_mask[2]) {
    const std::vector<int64_t> bias_sizes = {weight.size(0)};
    auto grads = at::convolution_backward(grad_output, input, weight, at::IntArrayRef(bias_sizes), {1, 1}, {1, 1},
                                          {1, 1}, false, {0, 0}, 1, {false, output_mask[1], output_mask[2]});
    grad_weight = std::get<1>(grads);
    grad_bias = std::get<2>(grads);
  }
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(pydetops, CPU, m) {
  m.impl("conv3x3_winograd", &conv3x3_winograd_cpu);
  m.impl("winograd_conv2d", &winograd_conv2d_cpu);
  m.impl("_winograd_conv2d_backward", &winograd_conv2d_backward_cpu);
}

}  // namespace pydetops
