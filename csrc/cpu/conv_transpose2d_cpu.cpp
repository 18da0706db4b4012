// CPU kernels of conv_transpose2d and its backward.
//
// Columns are kept patch-major: one row per input pixel (image, h, w), holding
// for every output channel its kH x kW patch, i.e. [B*H*W, C_out*kH*kW]. Per
// group g (C_in/g input channels, C_out/g output channels):
//   forward   columns[:, g] = input_g^T [B*H*W, C_in/g] @ weight_g [C_in/g, C_out/g*kH*kW]
// for a chunk of B images (one GEMM; B grows until the GEMM is not skinny), then
// col2im: every (image, output channel) plane is owned by one task, which adds
// each pixel's patch, kW contiguous values per kernel row, into a zeroed
// "full" plane ((H-1)*sh + (kH-1)*dh + 1 rows, likewise columns) where every
// patch fits, so the inner loop has no bounds checks and vectorises; then it
// crops the padding, adds the bias and writes the output plane. Fixed order,
// race-free, no atomics.
// Backward: im2col is the inverse gather (from a zero-bordered copy of the
// grad_output plane), then
//   grad_input_g  = weight_g @ columns[:, g]^T
//   grad_weight_g += input_g @ columns[:, g]        (batch chunks in order)
//   grad_bias[c]  = sum of grad_output[:, c]          (one task per channel)
// Chunking and the choice of where threads go depend on the shapes alone.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
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

constexpr int64_t kMinGemmColumns = 512;               // images per GEMM until it has this many pixel rows
constexpr int64_t kBandColumns = int64_t(1) << 16;     // columns of one band of input rows (256 KiB f32: L2)
constexpr int64_t kPerThreadColumns = int64_t(1) << 22; // largest per-thread columns buffer (16 MiB f32)
constexpr int64_t kGemmDepthBlock = 256;                // reduction slice of the grad_weight GEMM (see the backward)

// Images per GEMM (forward, and backward when chunks run in parallel). Enough images that the GEMM is not skinny (small planes,
// e.g. DCGAN's 4x4), few enough that the columns stay within the budget. Shapes only.
int64_t images_per_gemm(const ConvTranspose2dShape& s) {
  const int64_t hw = s.h_in * s.w_in;
  const int64_t per_image = std::max<int64_t>(1, s.c_out * s.kh * s.kw * hw);
  const int64_t want = (kMinGemmColumns + hw - 1) / hw;
  return std::max<int64_t>(1, std::min({s.batch, want, kColumnsBudget / per_image}));
}

int64_t batch_chunk(const ConvTranspose2dShape& s) {
  const int64_t per_image = std::max<int64_t>(1, s.c_out * s.kh * s.kw * s.h_in * s.w_in);
  return std::max<int64_t>(1, std::min<int64_t>(s.batch, kColumnsBudget / per_image));
}

// The "full" plane of one output channel: every tap of every input pixel lands inside it.
struct FullPlane {
  int64_t rows, cols;
  explicit FullPlane(const ConvTranspose2dShape& s)
      : rows((s.h_in - 1) * s.sh + (s.kh - 1) * s.dh + 1), cols((s.w_in - 1) * s.sw + (s.kw - 1) * s.dw + 1) {}
  int64_t size() const { return rows * cols; }
};

// d[kj * DW] += p[kj] for kj < kw; KW, DW > 0 are compile-time for the common cases.
template <int KW, int DW, typename T>
__attribute__((always_inline)) inline void add_patch_row(T* __restrict d, const T* __restrict p, int64_t kw, int64_t dw) {
  if (KW > 0 && DW > 0) {
    for (int kj = 0; kj < KW; ++kj) d[kj * DW] += p[kj];
  } else if (DW > 0) {
    for (int64_t kj = 0; kj < kw; ++kj) d[kj * DW] += p[kj];
  } else {
    for (int64_t kj = 0; kj < kw; ++kj) d[kj * dw] += p[kj];
  }
}

template <int KW, int DW, typename T>
__attribute__((always_inline)) inline void get_patch_row(T* __restrict p, const T* __restrict d, int64_t kw, int64_t dw) {
  if (KW > 0 && DW > 0) {
    for (int kj = 0; kj < KW; ++kj) p[kj] = d[kj * DW];
  } else if (DW > 0) {
    for (int64_t kj = 0; kj < kw; ++kj) p[kj] = d[kj * DW];
  } else {
    for (int64_t kj = 0; kj < kw; ++kj) p[kj] = d[kj * dw];
  }
}

// Adds the patches of input rows [h0, h1) of one output channel into its zeroed full
// plane. patches: the columns of pixel (h0, 0) at this channel's offset (row stride ldc).
template <int KW, int DW, typename acc_t>
__attribute__((always_inline)) inline void add_patches(const acc_t* patches, int64_t ldc, const ConvTranspose2dShape& s,
                                                       const FullPlane& full, int64_t h0, int64_t h1, acc_t* buf) {
  // Neighbouring pixels' patch rows overlap when the stride is below the patch width; adding
  // them one after the other would re-load values still in flight to memory (a store-forwarding
  // stall per row). So a row's pixels go in `phases` interleaved passes whose patches are disjoint.
  const int64_t span = (s.kw - 1) * s.dw + 1, phases = std::min(s.w_in, (span + s.sw - 1) / s.sw);
  for (int64_t h = h0; h < h1; ++h) {
    for (int64_t phase = 0; phase < phases; ++phase) {
      for (int64_t w = phase; w < s.w_in; w += phases) {
        const acc_t* p = patches + ((h - h0) * s.w_in + w) * ldc;
        acc_t* base = buf + h * s.sh * full.cols + w * s.sw;
        for (int64_t ki = 0; ki < s.kh; ++ki)
          add_patch_row<KW, DW>(base + ki * s.dh * full.cols, p + ki * s.kw, s.kw, s.dw);
      }
    }
  }
}

// Writes one output plane from its full plane: output (oh, ow) is full-plane
// (oh + ph, ow + pw); beyond the full plane (output_padding) only the bias remains.
template <typename acc_t>
__attribute__((always_inline)) inline void crop_plane(const acc_t* buf, const FullPlane& full, acc_t b,
                                                      const ConvTranspose2dShape& s, acc_t* plane) {
  const int64_t w_copy = std::max<int64_t>(0, std::min(s.w_out, full.cols - s.pw));
  for (int64_t oh = 0; oh < s.h_out; ++oh) {
    acc_t* dst = plane + oh * s.w_out;
    int64_t ow = 0;
    if (oh + s.ph < full.rows) {
      const acc_t* src = buf + (oh + s.ph) * full.cols + s.pw;
      for (; ow < w_copy; ++ow) dst[ow] = src[ow] + b;
    }
    for (; ow < s.w_out; ++ow) dst[ow] = b;
  }
}

// Work of tasks [begin, end) of col2im: task = (image, output channel).
// columns: [nb*H*W, C_out*kk] (row stride ldc); out: the nb images' [C_out, Ho, Wo] planes.
template <int KW, int DW, typename acc_t>
__attribute__((always_inline)) inline void col2im_tasks(const acc_t* cols, int64_t ldc, const acc_t* bias,
                                                        const ConvTranspose2dShape& s, acc_t* out, acc_t* buf,
                                                        int64_t begin, int64_t end) {
  const int64_t hw = s.h_in * s.w_in, plane_size = s.h_out * s.w_out, kk = s.kh * s.kw;
  const FullPlane full(s);
  for (int64_t task = begin; task < end; ++task) {
    const int64_t n = task / s.c_out, co = task % s.c_out;
    std::fill(buf, buf + full.size(), acc_t(0));
    add_patches<KW, DW>(cols + n * hw * ldc + co * kk, ldc, s, full, 0, s.h_in, buf);
    crop_plane(buf, full, bias ? bias[co] : acc_t(0), s, out + task * plane_size);
  }
}

// col2im of one band of input rows [h0, h1) of one image, for every output channel:
// band_cols holds those rows' columns; bufs the image's C_out full planes, zeroed
// before its first band. After the last band the planes are cropped into out (the
// image's [C_out, Ho, Wo]). Each output value gets its terms in the same order as in
// col2im_tasks (input rows ascending), so both paths give the same bits.
template <int KW, int DW, typename acc_t>
__attribute__((always_inline)) inline void col2im_band(const acc_t* band_cols, int64_t ldc, const acc_t* bias,
                                                       const ConvTranspose2dShape& s, int64_t h0, int64_t h1,
                                                       acc_t* bufs, acc_t* out) {
  const int64_t plane_size = s.h_out * s.w_out, kk = s.kh * s.kw;
  const FullPlane full(s);
  for (int64_t co = 0; co < s.c_out; ++co) {
    acc_t* buf = bufs + co * full.size();
    add_patches<KW, DW>(band_cols + co * kk, ldc, s, full, h0, h1, buf);
    if (h1 == s.h_in) crop_plane(buf, full, bias ? bias[co] : acc_t(0), s, out + co * plane_size);
  }
}

// Work of tasks [begin, end) of im2col, the inverse gather:
// columns[(n, h, w), (co, ki, kj)] = grad_out[n, co, target(h, ki), target(w, kj)] or 0.
template <int KW, int DW, typename acc_t>
__attribute__((always_inline)) inline void im2col_tasks(const acc_t* grad_out, const ConvTranspose2dShape& s,
                                                        acc_t* cols, int64_t ldc, acc_t* buf, int64_t begin,
                                                        int64_t end) {
  const int64_t hw = s.h_in * s.w_in, plane_size = s.h_out * s.w_out, kk = s.kh * s.kw;
  const FullPlane full(s);
  for (int64_t task = begin; task < end; ++task) {
    const int64_t n = task / s.c_out, co = task % s.c_out;
    // The grad_output plane in full-plane coordinates, zero where it has no value.
    const acc_t* plane = grad_out + task * plane_size;
    const int64_t w_copy = std::max<int64_t>(0, std::min(s.w_out, full.cols - s.pw));
    for (int64_t r = 0; r < full.rows; ++r) {
      acc_t* dst = buf + r * full.cols;
      const int64_t oh = r - s.ph;
      if (oh < 0 || oh >= s.h_out) {
        std::fill(dst, dst + full.cols, acc_t(0));
        continue;
      }
      std::fill(dst, dst + s.pw, acc_t(0));
      std::copy(plane + oh * s.w_out, plane + oh * s.w_out + w_copy, dst + s.pw);
      std::fill(dst + s.pw + w_copy, dst + full.cols, acc_t(0));
    }
    acc_t* patches = cols + n * hw * ldc + co * kk;
    for (int64_t h = 0; h < s.h_in; ++h) {
      for (int64_t w = 0; w < s.w_in; ++w) {
        acc_t* p = patches + (h * s.w_in + w) * ldc;
        const acc_t* base = buf + h * s.sh * full.cols + w * s.sw;
        for (int64_t ki = 0; ki < s.kh; ++ki)
          get_patch_row<KW, DW>(p + ki * s.kw, base + ki * s.dh * full.cols, s.kw, s.dw);
      }
    }
  }
}

// The same loops compiled twice: for the baseline ISA and, on x86, for AVX2
// (picked at run time). Only additions and copies: both give identical bits.
template <int KW, int DW, typename acc_t>
void col2im_tasks_base(const acc_t* cols, int64_t ldc, const acc_t* bias, const ConvTranspose2dShape& s, acc_t* out,
                       acc_t* buf, int64_t begin, int64_t end) {
  col2im_tasks<KW, DW>(cols, ldc, bias, s, out, buf, begin, end);
}
template <int KW, int DW, typename acc_t>
void col2im_band_base(const acc_t* band_cols, int64_t ldc, const acc_t* bias, const ConvTranspose2dShape& s,
                      int64_t h0, int64_t h1, acc_t* bufs, acc_t* out) {
  col2im_band<KW, DW>(band_cols, ldc, bias, s, h0, h1, bufs, out);
}
template <int KW, int DW, typename acc_t>
void im2col_tasks_base(const acc_t* go, const ConvTranspose2dShape& s, acc_t* cols, int64_t ldc, acc_t* buf,
                       int64_t begin, int64_t end) {
  im2col_tasks<KW, DW>(go, s, cols, ldc, buf, begin, end);
}
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define PYDETOPS_HAVE_AVX2_CLONE 1
template <int KW, int DW, typename acc_t>
__attribute__((target("avx2"))) void col2im_tasks_avx2(const acc_t* cols, int64_t ldc, const acc_t* bias,
                                                       const ConvTranspose2dShape& s, acc_t* out, acc_t* buf,
                                                       int64_t begin, int64_t end) {
  col2im_tasks<KW, DW>(cols, ldc, bias, s, out, buf, begin, end);
}
template <int KW, int DW, typename acc_t>
__attribute__((target("avx2"))) void col2im_band_avx2(const acc_t* band_cols, int64_t ldc, const acc_t* bias,
                                                      const ConvTranspose2dShape& s, int64_t h0, int64_t h1,
                                                      acc_t* bufs, acc_t* out) {
  col2im_band<KW, DW>(band_cols, ldc, bias, s, h0, h1, bufs, out);
}
template <int KW, int DW, typename acc_t>
__attribute__((target("avx2"))) void im2col_tasks_avx2(const acc_t* go, const ConvTranspose2dShape& s, acc_t* cols,
                                                       int64_t ldc, acc_t* buf, int64_t begin, int64_t end) {
  im2col_tasks<KW, DW>(go, s, cols, ldc, buf, begin, end);
}
bool cpu_has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2");
  return yes;
}
#else
#define PYDETOPS_HAVE_AVX2_CLONE 0
#endif

template <int KW, int DW, typename acc_t>
void col2im(const acc_t* cols, int64_t ldc, const acc_t* bias, const ConvTranspose2dShape& s, int64_t nb,
            acc_t* out) {
  const int64_t hw = s.h_in * s.w_in, kk = s.kh * s.kw;
  const FullPlane full(s);
  auto fn = &col2im_tasks_base<KW, DW, acc_t>;
#if PYDETOPS_HAVE_AVX2_CLONE
  if (cpu_has_avx2()) fn = &col2im_tasks_avx2<KW, DW, acc_t>;
#endif
  at::parallel_for(0, nb * s.c_out, grain_for(kk * hw + full.size()), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(static_cast<size_t>(full.size()));
    fn(cols, ldc, bias, s, out, buf.data(), begin, end);
  });
}

template <int KW, int DW, typename acc_t>
void im2col(const acc_t* grad_out, const ConvTranspose2dShape& s, int64_t nb, acc_t* cols, int64_t ldc) {
  const int64_t hw = s.h_in * s.w_in, kk = s.kh * s.kw;
  const FullPlane full(s);
  auto fn = &im2col_tasks_base<KW, DW, acc_t>;
#if PYDETOPS_HAVE_AVX2_CLONE
  if (cpu_has_avx2()) fn = &im2col_tasks_avx2<KW, DW, acc_t>;
#endif
  at::parallel_for(0, nb * s.c_out, grain_for(kk * hw + full.size()), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(static_cast<size_t>(full.size()));
    fn(grad_out, s, cols, ldc, buf.data(), begin, end);
  });
}

// dst[c * rows + r] = src[r * cols + c], in 16 x 16 tiles that stay in L1.
template <typename T>
void transpose_plane(const T* __restrict src, int64_t rows, int64_t cols, T* __restrict dst) {
  constexpr int64_t kTile = 16;
  for (int64_t r0 = 0; r0 < rows; r0 += kTile) {
    const int64_t r1 = std::min(r0 + kTile, rows);
    for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
      const int64_t c1 = std::min(c0 + kTile, cols);
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c) dst[c * rows + r] = src[r * cols + c];
    }
  }
}

// Compile-time kernel width and dilation for the common cases (k = 2, 3, 4; dilation 1).
template <typename F>
void dispatch_patch(int64_t kw, int64_t dw, F&& f) {
  if (dw == 1) {
    switch (kw) {
      case 2: f(std::integral_constant<int, 2>{}, std::integral_constant<int, 1>{}); return;
      case 3: f(std::integral_constant<int, 3>{}, std::integral_constant<int, 1>{}); return;
      case 4: f(std::integral_constant<int, 4>{}, std::integral_constant<int, 1>{}); return;
      default: f(std::integral_constant<int, 0>{}, std::integral_constant<int, 1>{}); return;
    }
  }
  f(std::integral_constant<int, 0>{}, std::integral_constant<int, 0>{});
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
    const int64_t hw = s.h_in * s.w_in, out_image = s.c_out * s.h_out * s.w_out, ldc = s.c_out * kk;
    const at::Tensor w = weight.to(acc_type).contiguous().view({s.c_in, cout_g * kk});  // [C_in, C_out/g*kk]
    const at::Tensor b = has_bias ? bias->to(acc_type).contiguous() : at::Tensor();
    const int64_t chunk = images_per_gemm(s);
    const int64_t n_chunks = (s.batch + chunk - 1) / chunk;
    // The input as pixel rows [N*H*W, C_in]: a free view of a channels-last input; a
    // transposed view of each NCHW image when a GEMM takes one image; otherwise one copy.
    const at::Tensor xa = x4.to(acc_type);
    const bool pixel_major = chunk > 1 || (xa.is_contiguous(at::MemoryFormat::ChannelsLast) && !xa.is_contiguous());
    const at::Tensor x = pixel_major ? xa.permute({0, 2, 3, 1}).contiguous().view({s.batch * hw, s.c_in})
                                     : xa.contiguous().view({s.batch * s.c_in, hw});
    // Pixels [p0, p0 + np) counted from the start of image n, group g's channels: [np, C_in/g].
    auto pixel_rows = [&](int64_t n, int64_t p0, int64_t np, int64_t g) -> at::Tensor {
      if (pixel_major) return x.narrow(0, n * hw + p0, np).narrow(1, g * cin_g, cin_g);
      return x.narrow(0, n * s.c_in + g * cin_g, cin_g).narrow(1, p0, np).t();  // within one image
    };
    auto input_rows = [&](int64_t n0, int64_t nb, int64_t g) { return pixel_rows(n0, 0, nb * hw, g); };
    auto run_chunk = [&](int64_t ci, at::Tensor& cols_buf) {
      const int64_t n0 = ci * chunk, nb = std::min(chunk, s.batch - n0);
      at::Tensor c = nb == chunk ? cols_buf : at::empty({nb * hw, ldc}, out.options());
      {
        RECORD_FUNCTION("pydetops::conv_transpose2d_gemm", std::vector<c10::IValue>());
        for (int64_t g = 0; g < G; ++g) {
          at::Tensor cg = G == 1 ? c : c.narrow(1, g * cout_g * kk, cout_g * kk);
          at::mm_out(cg, input_rows(n0, nb, g), w.narrow(0, g * cin_g, cin_g));
        }
      }
      RECORD_FUNCTION("pydetops::conv_transpose2d_col2im", std::vector<c10::IValue>());
      AT_DISPATCH_FLOATING_TYPES(acc_type, "conv_transpose2d_col2im", [&] {
        dispatch_patch(s.kw, s.dw, [&](auto kw_tag, auto dw_tag) {
          col2im<decltype(kw_tag)::value, decltype(dw_tag)::value, scalar_t>(
              c.data_ptr<scalar_t>(), ldc, has_bias ? b.data_ptr<scalar_t>() : nullptr, s, nb,
              out.data_ptr<scalar_t>() + n0 * out_image);
        });
      });
    };
    const FullPlane full(s);
    const int64_t band_rows = std::max<int64_t>(1, kBandColumns / std::max<int64_t>(1, s.w_in * ldc));
    if (chunk == 1 && s.batch > 1 && band_rows < s.h_in && s.c_out * full.size() <= kPerThreadColumns) {
      // Images in parallel; each image's GEMM runs band by band of input rows, and col2im
      // adds a band's columns into the image's full planes while they are still in cache
      // (an image's whole columns, e.g. 2 MiB for 32x32 -> 32 channels x 4x4, are not).
      at::parallel_for(0, s.batch, 1, [&](int64_t begin, int64_t end) {
        at::AutoDispatchBelowADInplaceOrView below_autograd;  // see below
        at::Tensor cols = at::empty({band_rows * s.w_in, ldc}, out.options());
        at::Tensor bufs = at::empty({s.c_out * full.size()}, out.options());
        // An NCHW image is transposed to pixel rows [H*W, C_in] first: BLAS runs the
        // small band GEMMs ~25 % faster on plain rows than on a transposed view.
        at::Tensor image_rows = pixel_major ? at::Tensor() : at::empty({hw, s.c_in}, out.options());
        AT_DISPATCH_FLOATING_TYPES(acc_type, "conv_transpose2d_col2im_band", [&] {
          dispatch_patch(s.kw, s.dw, [&](auto kw_tag, auto dw_tag) {
            constexpr int KW = decltype(kw_tag)::value, DW = decltype(dw_tag)::value;
            auto band_fn = &col2im_band_base<KW, DW, scalar_t>;
#if PYDETOPS_HAVE_AVX2_CLONE
            if (cpu_has_avx2()) band_fn = &col2im_band_avx2<KW, DW, scalar_t>;
#endif
            scalar_t* planes = bufs.data_ptr<scalar_t>();
            for (int64_t n = begin; n < end; ++n) {
              if (!pixel_major)
                transpose_plane(x.data_ptr<scalar_t>() + n * s.c_in * hw, s.c_in, hw, image_rows.data_ptr<scalar_t>());
              std::fill(planes, planes + bufs.numel(), scalar_t(0));
              for (int64_t h0 = 0; h0 < s.h_in; h0 += band_rows) {
                const int64_t h1 = std::min(h0 + band_rows, s.h_in), rows = (h1 - h0) * s.w_in;
                at::Tensor c = cols.narrow(0, 0, rows);
                for (int64_t g = 0; g < G; ++g) {
                  at::Tensor cg = G == 1 ? c : c.narrow(1, g * cout_g * kk, cout_g * kk);
                  const at::Tensor a = pixel_major ? pixel_rows(n, h0 * s.w_in, rows, g)
                                                   : image_rows.narrow(0, h0 * s.w_in, rows).narrow(1, g * cin_g, cin_g);
                  at::mm_out(cg, a, w.narrow(0, g * cin_g, cin_g));
                }
                band_fn(c.data_ptr<scalar_t>(), ldc, has_bias ? b.data_ptr<scalar_t>() : nullptr, s, h0, h1,
                        planes, out.data_ptr<scalar_t>() + n * out_image);
              }
            }
          });
        });
      });
    } else if (n_chunks > 1 && chunk * hw * ldc <= kPerThreadColumns) {
      // Chunks in parallel, each with its GEMM and col2im single-threaded on a per-thread
      // columns buffer that stays in cache.
      at::parallel_for(0, n_chunks, 1, [&](int64_t begin, int64_t end) {
        // Worker threads do not inherit the caller's dispatch state: stay below autograd.
        at::AutoDispatchBelowADInplaceOrView below_autograd;
        at::Tensor cols = at::empty({chunk * hw, ldc}, out.options());
        for (int64_t ci = begin; ci < end; ++ci) run_chunk(ci, cols);
      });
    } else {
      // Chunks in order, threads inside: BLAS threads the GEMM, col2im splits the planes.
      at::Tensor cols = at::empty({chunk * hw, ldc}, out.options());
      for (int64_t ci = 0; ci < n_chunks; ++ci) run_chunk(ci, cols);
    }
  }
  if (acc_type != input.scalar_type()) out = out.to(input.scalar_type());
  return s.unbatched ? out.squeeze(0) : out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_transpose2d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef output_padding, int64_t groups, at::IntArrayRef dilation,
    std::array<bool, 3> output_mask) {
  const ConvTranspose2dShape s = check_conv_transpose2d_backward_args(grad_output, input, weight, stride, padding,
                                                                     output_padding, groups, dilation);
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
    const int64_t ldc = s.c_out * kk, w_numel = s.c_in * cout_g * kk;
    // One chunk of images: im2col of its grad_output, then per group the grad_input
    // GEMM (into its own columns of grad_input_cm) and the grad_weight GEMM into gw_out
    // (accumulating when accumulate is true).
    auto run_chunk = [&](int64_t n0, int64_t nb, at::Tensor& c, at::Tensor& gw_out, bool accumulate) {
      AT_DISPATCH_FLOATING_TYPES(acc_type, "conv_transpose2d_im2col", [&] {
        dispatch_patch(s.kw, s.dw, [&](auto kw_tag, auto dw_tag) {
          im2col<decltype(kw_tag)::value, decltype(dw_tag)::value, scalar_t>(
              go.data_ptr<scalar_t>() + n0 * s.c_out * plane_size, s, nb, c.data_ptr<scalar_t>(), ldc);
        });
      });
      for (int64_t g = 0; g < G; ++g) {
        const at::Tensor cg = c.narrow(1, g * cout_g * kk, cout_g * kk);  // [nb*H*W, C_out/g*kk]
        if (need_input) {
          at::Tensor gi = grad_input_cm.narrow(0, g * cin_g, cin_g).narrow(1, n0 * hw, nb * hw);
          at::mm_out(gi, w.narrow(0, g * cin_g, cin_g), cg.t());
        }
        if (need_weight) {
          at::Tensor gw = gw_out.narrow(0, g * cin_g, cin_g);
          // The reduction runs over nb*H*W pixels: in fixed slices of kGemmDepthBlock, added in
          // order, because BLAS (MKL) splits a deep reduction differently for each thread count.
          const int64_t depth = nb * hw;
          for (int64_t k0 = 0; k0 < depth; k0 += kGemmDepthBlock) {
            const int64_t kb = std::min(kGemmDepthBlock, depth - k0);
            const at::Tensor xs = x.narrow(0, g * cin_g, cin_g).narrow(1, n0 * hw + k0, kb);
            const at::Tensor cs = cg.narrow(0, k0, kb);
            if (accumulate || k0 > 0) {
              gw.addmm_(xs, cs);
            } else {
              at::mm_out(gw, xs, cs);
            }
          }
        }
      }
    };
    const int64_t pchunk = images_per_gemm(s);
    const int64_t n_pchunks = (s.batch + pchunk - 1) / pchunk;
    if (n_pchunks > 1 && pchunk * hw * ldc <= kPerThreadColumns &&
        (!need_weight || n_pchunks * w_numel <= kColumnsBudget)) {
      // Chunks in parallel (as in the forward); each chunk's grad_weight goes to its own
      // partial, and the partials are summed in chunk order: the same bits for any thread count.
      at::Tensor partial = need_weight ? at::empty({n_pchunks, s.c_in, cout_g * kk}, acc_opts) : at::Tensor();
      at::parallel_for(0, n_pchunks, 1, [&](int64_t begin, int64_t end) {
        at::AutoDispatchBelowADInplaceOrView below_autograd;  // see the forward
        at::Tensor cols = at::empty({pchunk * hw, ldc}, acc_opts);
        for (int64_t ci = begin; ci < end; ++ci) {
          const int64_t n0 = ci * pchunk, nb = std::min(pchunk, s.batch - n0);
          at::Tensor c = nb == pchunk ? cols : at::empty({nb * hw, ldc}, acc_opts);
          at::Tensor part = need_weight ? partial[ci] : at::Tensor();
          run_chunk(n0, nb, c, part, false);
        }
      });
      if (need_weight) {
        AT_DISPATCH_FLOATING_TYPES(acc_type, "conv_transpose2d_grad_weight_sum", [&] {
          const scalar_t* src = partial.data_ptr<scalar_t>();
          scalar_t* dst = grad_weight.data_ptr<scalar_t>();
          at::parallel_for(0, w_numel, 4096, [&](int64_t begin, int64_t end) {
            for (int64_t i = begin; i < end; ++i) dst[i] = src[i];
            for (int64_t ci = 1; ci < n_pchunks; ++ci) {
              const scalar_t* p = src + ci * w_numel;
              for (int64_t i = begin; i < end; ++i) dst[i] += p[i];
            }
          });
        });
      }
    } else {
      // Chunks (as large as the budget allows) in order, threads inside BLAS and im2col.
      const int64_t chunk = batch_chunk(s);
      at::Tensor cols = at::empty({chunk * hw, ldc}, acc_opts);
      for (int64_t n0 = 0; n0 < s.batch; n0 += chunk) {
        const int64_t nb = std::min(chunk, s.batch - n0);
        at::Tensor c = nb == chunk ? cols : at::empty({nb * hw, ldc}, acc_opts);
        run_chunk(n0, nb, c, grad_weight, true);
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
