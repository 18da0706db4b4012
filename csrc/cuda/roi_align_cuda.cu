// CUDA kernels of roi_align and its backward (torchvision semantics, the
// geometry of common/roi_math.h shared with the CPU kernels).
//
// A first tiny kernel computes each RoI's geometry once (RoIAlignBox, its image,
// the rows/columns of the map it can touch). A RoI whose batch index is not an
// integer in [0, N) (the CPU raises; here that would need a device-to-host
// copy) is treated as invalid: it pools to zeros and receives no gradient, so
// nothing is ever read or written out of bounds.
//
// Forward: one thread per output element; contiguous (NCHW) input is walked
// with the pooled width fastest, channels-last input (stride(1) == 1) is read
// in place with the channel fastest, so a warp reads 32 consecutive channels of
// each tap. Only the samples that can fall on the map are visited
// (roi_align_sample_range), so huge adaptive grids cost no more than the map.
//
// Backward:
//  * default: one thread per grad element scatters its taps with atomicAdd
//    into an accumulator in the accumulate type (float for float16/bfloat16);
//  * deterministic (torch.use_deterministic_algorithms(True)): gather. RoIs
//    are listed per image (stable sort by batch index, so in increasing RoI
//    order); a block owns 32 pixels of one row of one image and 64 channels,
//    walks its image's RoIs in order and, for each RoI that can touch the row
//    segment, computes the per-bin row weight Wy[ph] and column weights
//    Wx[pw][lane] (sums of the bilinear weights of the bin's samples that land
//    on the pixel) once for all channels, then adds
//    sum_ph,pw Wy Wx grad[k, c, ph, pw] / count into a shared accumulator.
//    Every grad_input element is produced by one thread in a fixed order:
//    bit-identical run to run, no atomics, and no memory beyond O(K) besides
//    the output (torchvision's deterministic fallback materialises every
//    sample of every RoI).
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cfloat>
#include <cmath>

#include "common/checks.h"
#include "common/roi_math.h"
#include "ops/roi_align.h"

namespace pydetops {
namespace {

constexpr int kThreads = 256;
constexpr int kGatherLanes = 32;      // pixels of a row per block
constexpr int kGatherRows = 8;        // thread rows (channel phases) per block
constexpr int kGatherChannels = 64;   // channels per block

inline unsigned int blocks_for(int64_t n, int threads) {
  return static_cast<unsigned int>(std::min<int64_t>(std::max<int64_t>(1, (n + threads - 1) / threads), 1 << 30));
}

// Products rounded on their own, so that the bin starts (start + p * bin) are
// those of the CPU kernel (built with -ffp-contract=off), not an FMA.
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

template <typename T>
__device__ __forceinline__ T bin_start_of(T start, int64_t p, T bin) {
  return start + mul_rn(static_cast<T>(p), bin);
}

template <typename T>
struct RoIGeom {
  RoIAlignBox<T> box;
  int64_t batch;         // image, or -1: the RoI is invalid
  int64_t y0, y1, x0, x1;  // rows [y0, y1] and columns [x0, x1] it may touch (empty when y0 > y1)
  // Pixels by which a sample computed in T may stray from its exact position
  // (bin_weight_on's window); -1: too many to matter, use no window.
  int64_t margin_h, margin_w;
};

// Bound (in pixels) of the rounding error of a sample computed in T
// (roi_align_sample on bin_start_of) with respect to its exact position, for
// an axis starting at `start` with `pooled` bins of `bin` over a map of `size`:
// a few ulps of the largest magnitude involved. Negligible for ordinary boxes,
// but several pixels for float boxes with coordinates of ~1e7.
template <typename T>
__device__ inline double sample_slack(T start, T bin, int64_t pooled, int64_t size) {
  const double eps = sizeof(T) == sizeof(double) ? DBL_EPSILON : FLT_EPSILON;
  return 16.0 * eps *
         (fabs(static_cast<double>(start)) + fabs(static_cast<double>(pooled) * static_cast<double>(bin)) +
          static_cast<double>(size) + 1.0);
}

// Inclusive range of map indices that samples spread over [lo, hi] can touch
// (with a margin of one pixel plus `slack` for rounding), clamped to [0, size - 1].
__device__ inline void touched_range(double lo, double hi, double slack, int64_t size, int64_t* first,
                                     int64_t* last) {
  lo -= slack;
  hi += slack;
  if (!(hi >= -1.0) || !(lo <= static_cast<double>(size)) || size <= 0) {
    *first = 1;
    *last = 0;
    return;
  }
  const double a = floor(lo) - 1.0, b = floor(hi) + 2.0;
  *first = a < 0.0 ? 0 : static_cast<int64_t>(a);
  *last = b > static_cast<double>(size - 1) ? size - 1 : static_cast<int64_t>(b);
}

template <typename T>
__global__ void roi_geometry_kernel(const T* __restrict__ rois, int64_t K, int64_t N, int64_t H, int64_t W,
                                    double spatial_scale, int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio,
                                    bool aligned, RoIGeom<T>* __restrict__ geom, int64_t* __restrict__ batch_key) {
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < K;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const T* r = rois + 5 * k;
    RoIGeom<T> g;
    const double b = static_cast<double>(r[0]);
    const bool batch_ok = isfinite(b) && b == floor(b) && b >= 0.0 && b < static_cast<double>(N);
    g.box = roi_align_box<T>(r[1], r[2], r[3], r[4], spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned);
    if (!batch_ok) g.box.valid = false;
    g.batch = g.box.valid ? static_cast<int64_t>(b) : -1;
    g.y0 = g.x0 = 1;
    g.y1 = g.x1 = 0;
    g.margin_h = g.margin_w = 0;
    if (g.box.valid && g.box.grid_h > 0 && g.box.grid_w > 0) {
      const double sh = static_cast<double>(g.box.start_h), sw = static_cast<double>(g.box.start_w);
      const double eh = sh + static_cast<double>(pooled_h) * static_cast<double>(g.box.bin_h);
      const double ew = sw + static_cast<double>(pooled_w) * static_cast<double>(g.box.bin_w);
      const double slack_h = sample_slack(g.box.start_h, g.box.bin_h, pooled_h, H);
      const double slack_w = sample_slack(g.box.start_w, g.box.bin_w, pooled_w, W);
      touched_range(fmin(sh, eh), fmax(sh, eh), slack_h, H, &g.y0, &g.y1);
      touched_range(fmin(sw, ew), fmax(sw, ew), slack_w, W, &g.x0, &g.x1);
      g.margin_h = slack_h <= 4.0 * static_cast<double>(H) + 4.0 ? static_cast<int64_t>(ceil(slack_h)) : -1;
      g.margin_w = slack_w <= 4.0 * static_cast<double>(W) + 4.0 ? static_cast<int64_t>(ceil(slack_w)) : -1;
    }
    geom[k] = g;
    batch_key[k] = g.batch < 0 ? N : g.batch;  // invalid RoIs sort after every image
  }
}

// ---------------------------------------------------------------- forward

template <typename scalar_t, typename acc_t, bool kChannelsFastest>
__global__ void roi_align_forward_kernel(const scalar_t* __restrict__ input, int64_t sN, int64_t sC, int64_t sH,
                                         int64_t sW, int64_t C, int64_t H, int64_t W,
                                         const RoIGeom<acc_t>* __restrict__ geom, int64_t K, int64_t PH, int64_t PW,
                                         scalar_t* __restrict__ out) {
  const int64_t total = K * C * PH * PW;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t k, c, ph, pw, t = idx;
    if (kChannelsFastest) {
      c = t % C; t /= C;
      pw = t % PW; t /= PW;
      ph = t % PH; k = t / PH;
    } else {
      pw = t % PW; t /= PW;
      ph = t % PH; t /= PH;
      c = t % C; k = t / C;
    }
    const RoIAlignBox<acc_t> b = geom[k].box;
    acc_t acc = 0;
    if (b.valid) {
      const scalar_t* plane = input + geom[k].batch * sN + c * sC;
      const acc_t ys = bin_start_of(b.start_h, ph, b.bin_h);
      const acc_t xs = bin_start_of(b.start_w, pw, b.bin_w);
      int64_t iy0, iy1, ix0, ix1;
      roi_align_sample_range(ys, b.bin_h, b.grid_h, H, &iy0, &iy1);
      roi_align_sample_range(xs, b.bin_w, b.grid_w, W, &ix0, &ix1);
      for (int64_t iy = iy0; iy < iy1; ++iy) {
        const BilinearAxis<acc_t> ay = bilinear_axis(roi_align_sample(ys, b.bin_h, iy, b.grid_h), H);
        if (!ay.valid) continue;
        const scalar_t* rl = plane + ay.low * sH;
        const scalar_t* rh = plane + ay.high * sH;
        for (int64_t ix = ix0; ix < ix1; ++ix) {
          const BilinearAxis<acc_t> ax = bilinear_axis(roi_align_sample(xs, b.bin_w, ix, b.grid_w), W);
          if (!ax.valid) continue;
          acc += (ay.w_low * ax.w_low) * static_cast<acc_t>(rl[ax.low * sW]) +
                 (ay.w_low * ax.w_high) * static_cast<acc_t>(rl[ax.high * sW]) +
                 (ay.w_high * ax.w_low) * static_cast<acc_t>(rh[ax.low * sW]) +
                 (ay.w_high * ax.w_high) * static_cast<acc_t>(rh[ax.high * sW]);
        }
      }
      acc /= b.count;
    }
    out[((k * C + c) * PH + ph) * PW + pw] = static_cast<scalar_t>(acc);
  }
}

// ---------------------------------------------------------------- backward

// Default: scatter with atomics. grad: [K, C, PH, PW] acc_t contiguous;
// gi: [N, C, H, W] acc_t contiguous, zero-filled.
template <typename acc_t>
__global__ void roi_align_backward_atomic_kernel(const acc_t* __restrict__ grad, const RoIGeom<acc_t>* __restrict__ geom,
                                                 int64_t K, int64_t C, int64_t H, int64_t W, int64_t PH, int64_t PW,
                                                 acc_t* __restrict__ gi) {
  const int64_t total = K * C * PH * PW;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t t = idx;
    const int64_t pw = t % PW; t /= PW;
    const int64_t ph = t % PH; t /= PH;
    const int64_t c = t % C;
    const int64_t k = t / C;
    const RoIAlignBox<acc_t> b = geom[k].box;
    if (!b.valid) continue;
    const acc_t gv = grad[idx] / b.count;
    if (gv == acc_t(0)) continue;
    acc_t* plane = gi + (geom[k].batch * C + c) * H * W;
    const acc_t ys = bin_start_of(b.start_h, ph, b.bin_h);
    const acc_t xs = bin_start_of(b.start_w, pw, b.bin_w);
    int64_t iy0, iy1, ix0, ix1;
    roi_align_sample_range(ys, b.bin_h, b.grid_h, H, &iy0, &iy1);
    roi_align_sample_range(xs, b.bin_w, b.grid_w, W, &ix0, &ix1);
    for (int64_t iy = iy0; iy < iy1; ++iy) {
      const BilinearAxis<acc_t> ay = bilinear_axis(roi_align_sample(ys, b.bin_h, iy, b.grid_h), H);
      if (!ay.valid) continue;
      for (int64_t ix = ix0; ix < ix1; ++ix) {
        const BilinearAxis<acc_t> ax = bilinear_axis(roi_align_sample(xs, b.bin_w, ix, b.grid_w), W);
        if (!ax.valid) continue;
        atomicAdd(plane + ay.low * W + ax.low, ay.w_low * ax.w_low * gv);
        atomicAdd(plane + ay.low * W + ax.high, ay.w_low * ax.w_high * gv);
        atomicAdd(plane + ay.high * W + ax.low, ay.w_high * ax.w_low * gv);
        atomicAdd(plane + ay.high * W + ax.high, ay.w_high * ax.w_high * gv);
      }
    }
  }
}

// Sum of the bilinear weights that the samples of one bin put on pixel `p` of
// an axis of `size` pixels (bin_start, bin, grid as in roi_align_sample).
// `margin`: RoIGeom's margin_h / margin_w.
template <typename T>
__device__ inline T bin_weight_on(T bin_start, T bin, int64_t grid, int64_t size, int64_t p, int64_t margin) {
  // The samples the CPU kernel visits (roi_align_sample_range over the whole
  // axis), restricted (margin >= 0) to those whose exact position is within
  // [p - 2 - margin, p + 2 + margin]: only those can land on p once rounded
  // (a superset; each sample is still tested).
  int64_t i0, i1;
  roi_align_sample_range(bin_start, bin, grid, size, &i0, &i1);
  if (margin >= 0) {
    int64_t j0, j1;
    roi_align_sample_range(bin_start - static_cast<T>(p - 1 - margin), bin, grid, 3 + 2 * margin, &j0, &j1);
    i0 = i0 > j0 ? i0 : j0;
    i1 = i1 < j1 ? i1 : j1;
  }
  T w = T(0);
  for (int64_t i = i0; i < i1; ++i) {
    const BilinearAxis<T> a = bilinear_axis(roi_align_sample(bin_start, bin, i, grid), size);
    if (!a.valid) continue;
    if (a.low == p) w += a.w_low;
    if (a.high == p) w += a.w_high;
  }
  return w;
}

// Deterministic gather. Block (kGatherLanes, kGatherRows); blockIdx.x: (image,
// row, column tile); blockIdx.y: channel chunk. roi_order/offsets: the RoIs of
// image n are roi_order[offsets[n], offsets[n + 1]), in increasing order.
// Dynamic shared memory: acc[kGatherChannels][kGatherLanes], wx[PW][kGatherLanes], wy[PH].
template <typename scalar_t, typename acc_t>
__global__ void roi_align_backward_gather_kernel(const acc_t* __restrict__ grad, const RoIGeom<acc_t>* __restrict__ geom,
                                                 const int64_t* __restrict__ roi_order,
                                                 const int64_t* __restrict__ offsets, int64_t C, int64_t H, int64_t W,
                                                 int64_t PH, int64_t PW, scalar_t* __restrict__ gi) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* acc = reinterpret_cast<acc_t*>(smem_raw);    // [kGatherChannels][kGatherLanes]
  acc_t* wx = acc + kGatherChannels * kGatherLanes;   // [PW][kGatherLanes]
  acc_t* wy = wx + PW * kGatherLanes;                 // [PH]
  __shared__ int64_t pw_range[2];

  const int lane = threadIdx.x, ty = threadIdx.y;
  const int tid = ty * kGatherLanes + lane;
  const int nthreads = kGatherLanes * kGatherRows;
  const int64_t col_tiles = (W + kGatherLanes - 1) / kGatherLanes;
  int64_t t = blockIdx.x;
  const int64_t ct = t % col_tiles; t /= col_tiles;
  const int64_t h = t % H;
  const int64_t n = t / H;
  const int64_t w0 = ct * kGatherLanes;
  const int64_t w = w0 + lane;
  const int64_t w_last = std::min<int64_t>(w0 + kGatherLanes, W) - 1;
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * kGatherChannels;
  const int64_t cn = std::min<int64_t>(kGatherChannels, C - c0);

  for (int e = tid; e < kGatherChannels * kGatherLanes; e += nthreads) acc[e] = acc_t(0);

  const int64_t r_begin = offsets[n], r_end = offsets[n + 1];
  for (int64_t r = r_begin; r < r_end; ++r) {
    const int64_t k = roi_order[r];
    const RoIGeom<acc_t> g = geom[k];
    // Uniform over the block: does the RoI reach this row segment?
    if (h < g.y0 || h > g.y1 || w_last < g.x0 || w0 > g.x1) continue;
    const RoIAlignBox<acc_t>& b = g.box;
    __syncthreads();  // the previous RoI is done with wx / wy
    for (int64_t ph = tid; ph < PH; ph += nthreads)
      wy[ph] = bin_weight_on(bin_start_of(b.start_h, ph, b.bin_h), b.bin_h, b.grid_h, H, h, g.margin_h);
    for (int64_t pw = ty; pw < PW; pw += kGatherRows)
      wx[pw * kGatherLanes + lane] =
          w < W ? bin_weight_on(bin_start_of(b.start_w, pw, b.bin_w), b.bin_w, b.grid_w, W, w, g.margin_w)
                : acc_t(0);
    __syncthreads();
    if (tid == 0) {  // the bins with a non-zero column weight anywhere in the segment
      int64_t lo = PW, hi = -1;
      for (int64_t pw = 0; pw < PW; ++pw) {
        bool any = false;
        for (int l = 0; l < kGatherLanes; ++l) any = any || wx[pw * kGatherLanes + l] != acc_t(0);
        if (any) {
          lo = lo < pw ? lo : pw;
          hi = pw;
        }
      }
      pw_range[0] = lo;
      pw_range[1] = hi;
    }
    __syncthreads();
    const int64_t pw_lo = pw_range[0], pw_hi = pw_range[1];
    if (pw_lo > pw_hi) continue;  // uniform
    const acc_t inv_count = acc_t(1) / b.count;
    for (int64_t cc = ty; cc < cn; cc += kGatherRows) {
      const acc_t* gk = grad + ((k * C + c0 + cc) * PH) * PW;
      acc_t s = 0;
      for (int64_t ph = 0; ph < PH; ++ph) {
        const acc_t wyv = wy[ph];
        if (wyv == acc_t(0)) continue;
        acc_t row = 0;
        for (int64_t pw = pw_lo; pw <= pw_hi; ++pw) row += wx[pw * kGatherLanes + lane] * gk[ph * PW + pw];
        s += wyv * row;
      }
      acc[cc * kGatherLanes + lane] += s * inv_count;
    }
  }
  __syncthreads();
  if (w < W) {
    for (int64_t cc = ty; cc < cn; cc += kGatherRows)
      gi[((n * C + c0 + cc) * H + h) * W + w] = static_cast<scalar_t>(acc[cc * kGatherLanes + lane]);
  }
}

// ---------------------------------------------------------------- host side

struct Geometry {
  at::Tensor bytes;  // RoIGeom<acc_t>[K]
  at::Tensor batch_key;
};

template <typename acc_t>
Geometry compute_geometry(const at::Tensor& rois, int64_t N, int64_t H, int64_t W, double spatial_scale,
                          int64_t PH, int64_t PW, int64_t sampling_ratio, bool aligned, cudaStream_t stream) {
  const int64_t K = rois.size(0);
  Geometry g;
  g.bytes = at::empty({std::max<int64_t>(K, 1) * static_cast<int64_t>(sizeof(RoIGeom<acc_t>))},
                      rois.options().dtype(at::kByte));
  g.batch_key = at::empty({K}, rois.options().dtype(at::kLong));
  if (K > 0) {
    roi_geometry_kernel<acc_t><<<blocks_for(K, kThreads), kThreads, 0, stream>>>(
        rois.data_ptr<acc_t>(), K, N, H, W, spatial_scale, PH, PW, sampling_ratio, aligned,
        reinterpret_cast<RoIGeom<acc_t>*>(g.bytes.data_ptr<uint8_t>()), g.batch_key.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return g;
}

at::Tensor roi_align_cuda(const at::Tensor& input, const at::Tensor& boxes, double spatial_scale,
                          int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  check_roi_align_args(input, boxes, spatial_scale, pooled_height, pooled_width);
  check_sampling_ratio(sampling_ratio);
  const c10::cuda::CUDAGuard guard(input.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t K = boxes.size(0), N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  if (K * C == 0 || input.numel() == 0) return at::zeros({K, C, pooled_height, pooled_width}, input.options());
  at::Tensor out = at::empty({K, C, pooled_height, pooled_width}, input.options());  // every element written
  const auto acc_type = accumulate_type_of(input.scalar_type());
  const at::Tensor rois = boxes.to(acc_type).contiguous();
  const bool channels_fastest = input.stride(1) == 1 && C > 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Geometry g = compute_geometry<acc_t>(rois, N, H, W, spatial_scale, pooled_height, pooled_width,
                                               sampling_ratio, aligned, stream);
    const auto* geom = reinterpret_cast<const RoIGeom<acc_t>*>(g.bytes.data_ptr<uint8_t>());
    const unsigned int grid = blocks_for(out.numel(), kThreads);
    if (channels_fastest) {
      roi_align_forward_kernel<scalar_t, acc_t, true><<<grid, kThreads, 0, stream>>>(
          input.data_ptr<scalar_t>(), input.stride(0), input.stride(1), input.stride(2), input.stride(3), C, H, W,
          geom, K, pooled_height, pooled_width, out.data_ptr<scalar_t>());
    } else {
      roi_align_forward_kernel<scalar_t, acc_t, false><<<grid, kThreads, 0, stream>>>(
          input.data_ptr<scalar_t>(), input.stride(0), input.stride(1), input.stride(2), input.stride(3), C, H, W,
          geom, K, pooled_height, pooled_width, out.data_ptr<scalar_t>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& boxes, double spatial_scale,
                                   int64_t pooled_height, int64_t pooled_width, int64_t batch_size, int64_t channels,
                                   int64_t height, int64_t width, int64_t sampling_ratio, bool aligned) {
  check_roi_pool_args(spatial_scale, pooled_height, pooled_width);
  check_sampling_ratio(sampling_ratio);
  TORCH_CHECK_VALUE(batch_size >= 0 && channels >= 0 && height >= 0 && width >= 0,
                    "the input sizes must be >= 0, got ", batch_size, ", ", channels, ", ", height, ", ", width);
  check_floating(grad, "grad");
  check_roi_boxes(boxes, grad.scalar_type(), grad.device(), batch_size);
  check_roi_grad(grad, boxes, channels, pooled_height, pooled_width);
  const c10::cuda::CUDAGuard guard(grad.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t K = boxes.size(0), N = batch_size, C = channels, H = height, W = width;
  const int64_t PH = pooled_height, PW = pooled_width;
  const auto acc_type = accumulate_type_of(grad.scalar_type());
  if (N * C * H * W == 0) return at::empty({N, C, H, W}, grad.options());
  if (K == 0) return at::zeros({N, C, H, W}, grad.options());
  const at::Tensor rois = boxes.to(acc_type).contiguous();
  const at::Tensor g = grad.to(acc_type).contiguous();
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  at::Tensor gi;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Geometry geo = compute_geometry<acc_t>(rois, N, H, W, spatial_scale, PH, PW, sampling_ratio, aligned,
                                                 stream);
    const auto* geom = reinterpret_cast<const RoIGeom<acc_t>*>(geo.bytes.data_ptr<uint8_t>());
    if (!deterministic) {
      at::Tensor acc = at::zeros({N, C, H, W}, grad.options().dtype(acc_type));
      roi_align_backward_atomic_kernel<acc_t><<<blocks_for(g.numel(), kThreads), kThreads, 0, stream>>>(
          g.data_ptr<acc_t>(), geom, K, C, H, W, PH, PW, acc.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      gi = acc.scalar_type() == grad.scalar_type() ? acc : acc.to(grad.scalar_type());
      return;
    }
    // RoIs per image in increasing order: stable sort by image (invalid RoIs last).
    const auto sorted = at::sort(geo.batch_key, /*stable=*/true, /*dim=*/0, /*descending=*/false);
    const at::Tensor roi_order = std::get<1>(sorted).contiguous();
    const at::Tensor offsets =
        at::searchsorted(std::get<0>(sorted).contiguous(), at::arange(N + 1, geo.batch_key.options())).contiguous();
    gi = at::empty({N, C, H, W}, grad.options());
    const int64_t blocks_x = N * H * ((W + kGatherLanes - 1) / kGatherLanes);
    const int64_t blocks_y = (C + kGatherChannels - 1) / kGatherChannels;
    TORCH_CHECK(blocks_x < (int64_t(1) << 31) && blocks_y <= 65535,
                "roi_align backward: input too large for the deterministic CUDA kernel");
    // Dynamic shared memory; past the default 48 KiB (output_size wider than
    // ~300 in float, ~120 in double) opt in to the device's larger limit.
    const size_t smem = sizeof(acc_t) * (static_cast<size_t>(kGatherChannels) * kGatherLanes +
                                         static_cast<size_t>(PW) * kGatherLanes + static_cast<size_t>(PH));
    const size_t smem_static = 2 * sizeof(int64_t);  // pw_range
    int optin = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, grad.device().index()));
    const size_t smem_optin = static_cast<size_t>(optin);
    TORCH_CHECK_VALUE(smem + smem_static <= std::max<size_t>(smem_optin, 48 * 1024),
                      "roi_align backward (deterministic): output_size ", PH, "x", PW,
                      " is too large for the deterministic CUDA kernel");
    if (smem + smem_static > 48 * 1024) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(roi_align_backward_gather_kernel<scalar_t, acc_t>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    }
    const dim3 block(kGatherLanes, kGatherRows);
    const dim3 grid_dim(static_cast<unsigned int>(blocks_x), static_cast<unsigned int>(blocks_y));
    roi_align_backward_gather_kernel<scalar_t, acc_t><<<grid_dim, block, smem, stream>>>(
        g.data_ptr<acc_t>(), geom, roi_order.data_ptr<int64_t>(), offsets.data_ptr<int64_t>(), C, H, W, PH, PW,
        gi.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return gi;
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CUDA, m) {
  m.impl("roi_align", &pydetops::roi_align_cuda);
  m.impl("_roi_align_backward", &pydetops::roi_align_backward_cuda);
}
