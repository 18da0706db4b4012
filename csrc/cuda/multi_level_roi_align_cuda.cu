// CUDA kernels of multi_level_roi_align (every RoI pooled by RoIAlign from the
// feature map its `levels` entry names) and its backward, on the geometry of
// common/roi_math.h shared with the CPU kernel.
//
// The feature maps are passed by value in a table of up to kLevelsPerLaunch
// maps (pointer, strides, size, scale); more levels are processed in groups,
// one launch per group. A first tiny kernel computes each RoI's geometry once
// (RoIAlignBox, image, level). A RoI whose level is outside [0, L) pools to
// zeros and takes no gradient (as on the CPU); one whose batch index is not an
// integer in [0, N) (the CPU raises; here that would need a device-to-host
// copy) is treated the same way, so nothing is read or written out of bounds.
//
// Forward: one thread per output element (pooled width fastest; channel
// fastest when the maps are channels-last, read in place).
// Backward:
//  * default: one thread per grad element scatters its bilinear taps with
//    atomicAdd into per-level accumulators in the accumulate type;
//  * deterministic (torch.use_deterministic_algorithms(True)): one thread per
//    grad_input plane (level, image, channel) visits the RoIs of its (level,
//    image) in increasing order, their bins, samples and corners in the CPU
//    kernel's order, products rounded on their own (no FMA contraction of the
//    kernel's own arithmetic): bit-identical run to run. The same additions as
//    the CPU kernel; bit-equality with the CPU is not guaranteed, because nvcc
//    may contract a*b+c in roi_align_box (common/roi_math.h) where the CPU build
//    (-ffp-contract=off) does not. (Parallel over planes only: slower than the
//    default.)
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/checks.h"
#include "common/roi_math.h"
#include "ops/multi_level_roi_align.h"
#include "ops/roi_align.h"

namespace pydetops {
namespace {

constexpr int kThreads = 256;
constexpr int kLevelsPerLaunch = 8;

inline unsigned int blocks_for(int64_t n, int threads) {
  return static_cast<unsigned int>(std::min<int64_t>(std::max<int64_t>(1, (n + threads - 1) / threads), 1 << 30));
}

__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

// A group of levels [first, first + count): their maps (or grad accumulators).
struct LevelTable {
  int first, count;
  const void* data[kLevelsPerLaunch];  // features (forward) / nullptr
  void* grad[kLevelsPerLaunch];        // grad accumulators (backward) / nullptr
  int64_t sN[kLevelsPerLaunch], sC[kLevelsPerLaunch], sH[kLevelsPerLaunch], sW[kLevelsPerLaunch];
  int64_t H[kLevelsPerLaunch], W[kLevelsPerLaunch];
  double scale[kLevelsPerLaunch];
};

template <typename T>
struct RoIGeomML {
  RoIAlignBox<T> box;
  int64_t batch;  // image, or -1: the RoI pools to zeros
  int64_t level;  // in [0, L) when batch >= 0
};

// Geometry of the RoIs whose level is in the table's group; RoIs with a level
// outside [0, L) or a bad batch index are marked invalid by the group that
// starts at level 0. key[k] = level * N + image (L * N: invalid), for grouping.
template <typename T>
__global__ void ml_geometry_kernel(const T* __restrict__ rois, const int64_t* __restrict__ levels, int64_t K,
                                   int64_t N, int64_t L, LevelTable tab, int64_t PH, int64_t PW,
                                   int64_t sampling_ratio, bool aligned, RoIGeomML<T>* __restrict__ geom,
                                   int64_t* __restrict__ key) {
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < K;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t l = levels[k];
    const bool in_range = l >= 0 && l < L;
    const bool in_group = in_range && l >= tab.first && l < tab.first + tab.count;
    if (!in_group && !(tab.first == 0 && !in_range)) continue;  // another group's RoI
    RoIGeomML<T> g;
    g.level = in_range ? l : -1;
    g.batch = -1;
    g.box.valid = false;
    g.box.grid_h = g.box.grid_w = 0;
    g.box.count = T(1);
    g.box.start_h = g.box.start_w = g.box.bin_h = g.box.bin_w = T(0);
    if (in_group) {
      const T* r = rois + 5 * k;
      const double b = static_cast<double>(r[0]);
      const bool batch_ok = isfinite(b) && b == floor(b) && b >= 0.0 && b < static_cast<double>(N);
      const int li = static_cast<int>(l - tab.first);
      g.box = roi_align_box<T>(r[1], r[2], r[3], r[4], tab.scale[li], PH, PW, sampling_ratio, aligned);
      if (!batch_ok) g.box.valid = false;
      if (g.box.valid) g.batch = static_cast<int64_t>(b);
    }
    geom[k] = g;
    key[k] = g.batch >= 0 ? g.level * N + g.batch : L * N;
  }
}

// ---------------------------------------------------------------- forward

template <typename scalar_t, typename acc_t, bool kChannelsFastest>
__global__ void ml_forward_kernel(LevelTable tab, const RoIGeomML<acc_t>* __restrict__ geom, int64_t K, int64_t C,
                                  int64_t PH, int64_t PW, scalar_t* __restrict__ out) {
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
    const RoIGeomML<acc_t> g = geom[k];
    const int64_t li = g.level - tab.first;
    if (g.level < 0 || li < 0 || li >= tab.count) {
      // Another group writes this RoI; the first group writes the zeros of invalid ones.
      if (tab.first == 0 && (g.level < 0 || g.batch < 0)) out[((k * C + c) * PH + ph) * PW + pw] = scalar_t(0);
      continue;
    }
    const RoIAlignBox<acc_t>& b = g.box;
    acc_t acc = 0;
    if (b.valid && g.batch >= 0) {
      const int64_t H = tab.H[li], W = tab.W[li], sH = tab.sH[li], sW = tab.sW[li];
      const scalar_t* plane = static_cast<const scalar_t*>(tab.data[li]) + g.batch * tab.sN[li] + c * tab.sC[li];
      const acc_t ys = b.start_h + mul_rn(static_cast<acc_t>(ph), b.bin_h);
      const acc_t xs = b.start_w + mul_rn(static_cast<acc_t>(pw), b.bin_w);
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

// Default: scatter with atomics into tab.grad[li] ([N, C, H, W] acc_t, zero-filled).
template <typename acc_t>
__global__ void ml_backward_atomic_kernel(const acc_t* __restrict__ grad, LevelTable tab,
                                          const RoIGeomML<acc_t>* __restrict__ geom, int64_t K, int64_t C, int64_t PH,
                                          int64_t PW) {
  const int64_t total = K * C * PH * PW;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t t = idx;
    const int64_t pw = t % PW; t /= PW;
    const int64_t ph = t % PH; t /= PH;
    const int64_t c = t % C;
    const int64_t k = t / C;
    const RoIGeomML<acc_t> g = geom[k];
    const int64_t li = g.level - tab.first;
    if (g.batch < 0 || !g.box.valid || li < 0 || li >= tab.count) continue;
    const RoIAlignBox<acc_t>& b = g.box;
    const acc_t gv = grad[idx] / b.count;
    if (gv == acc_t(0)) continue;
    const int64_t H = tab.H[li], W = tab.W[li];
    acc_t* plane = static_cast<acc_t*>(tab.grad[li]) + (g.batch * C + c) * H * W;
    const acc_t ys = b.start_h + mul_rn(static_cast<acc_t>(ph), b.bin_h);
    const acc_t xs = b.start_w + mul_rn(static_cast<acc_t>(pw), b.bin_w);
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

// Deterministic: one thread per plane (level li of the group, image n,
// channel c) of tab.grad[li] (acc_t, zero-filled). The RoIs of group
// (level, n) are roi_order[offsets[level * N + n], offsets[level * N + n + 1]).
template <typename acc_t>
__global__ void ml_backward_owner_kernel(const acc_t* __restrict__ grad, LevelTable tab,
                                         const RoIGeomML<acc_t>* __restrict__ geom,
                                         const int64_t* __restrict__ roi_order, const int64_t* __restrict__ offsets,
                                         int64_t N, int64_t C, int64_t PH, int64_t PW) {
  const int64_t total = static_cast<int64_t>(tab.count) * N * C;
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < total;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = p % C;
    const int64_t n = (p / C) % N;
    const int li = static_cast<int>(p / (C * N));
    const int64_t level = tab.first + li;
    const int64_t H = tab.H[li], W = tab.W[li];
    if (H == 0 || W == 0) continue;
    acc_t* plane = static_cast<acc_t*>(tab.grad[li]) + (n * C + c) * H * W;
    const int64_t grp = level * N + n;
    for (int64_t q = offsets[grp]; q < offsets[grp + 1]; ++q) {
      const int64_t k = roi_order[q];
      const RoIAlignBox<acc_t> b = geom[k].box;
      if (!b.valid) continue;
      const acc_t* gk = grad + (k * C + c) * PH * PW;
      for (int64_t ph = 0; ph < PH; ++ph) {
        const acc_t ys = b.start_h + mul_rn(static_cast<acc_t>(ph), b.bin_h);
        int64_t iy0, iy1;
        roi_align_sample_range(ys, b.bin_h, b.grid_h, H, &iy0, &iy1);
        for (int64_t pw = 0; pw < PW; ++pw) {
          const acc_t xs = b.start_w + mul_rn(static_cast<acc_t>(pw), b.bin_w);
          int64_t ix0, ix1;
          roi_align_sample_range(xs, b.bin_w, b.grid_w, W, &ix0, &ix1);
          const acc_t gv = gk[ph * PW + pw] / b.count;
          for (int64_t iy = iy0; iy < iy1; ++iy) {
            const BilinearAxis<acc_t> ay = bilinear_axis(roi_align_sample(ys, b.bin_h, iy, b.grid_h), H);
            if (!ay.valid) continue;
            acc_t* rl = plane + ay.low * W;
            acc_t* rh = plane + ay.high * W;
            for (int64_t ix = ix0; ix < ix1; ++ix) {
              const BilinearAxis<acc_t> ax = bilinear_axis(roi_align_sample(xs, b.bin_w, ix, b.grid_w), W);
              if (!ax.valid) continue;
              // The CPU's order: the four corners one after the other (they may coincide).
              rl[ax.low] = rl[ax.low] + mul_rn(mul_rn(ay.w_low, ax.w_low), gv);
              rl[ax.high] = rl[ax.high] + mul_rn(mul_rn(ay.w_low, ax.w_high), gv);
              rh[ax.low] = rh[ax.low] + mul_rn(mul_rn(ay.w_high, ax.w_low), gv);
              rh[ax.high] = rh[ax.high] + mul_rn(mul_rn(ay.w_high, ax.w_high), gv);
            }
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------- host side

LevelTable level_group(int first, int count) {
  LevelTable t{};
  t.first = first;
  t.count = count;
  return t;
}

template <typename acc_t>
void compute_geometry(const at::Tensor& rois, const at::Tensor& lv, int64_t N, int64_t L,
                      const std::vector<LevelTable>& groups, int64_t PH, int64_t PW, int64_t sampling_ratio,
                      bool aligned, at::Tensor& geom_bytes, at::Tensor& key, cudaStream_t stream) {
  const int64_t K = rois.size(0);
  geom_bytes = at::empty({std::max<int64_t>(K, 1) * static_cast<int64_t>(sizeof(RoIGeomML<acc_t>))},
                         rois.options().dtype(at::kByte));
  key = at::empty({K}, rois.options().dtype(at::kLong));
  if (K == 0) return;
  for (const LevelTable& tab : groups) {
    ml_geometry_kernel<acc_t><<<blocks_for(K, kThreads), kThreads, 0, stream>>>(
        rois.data_ptr<acc_t>(), lv.data_ptr<int64_t>(), K, N, L, tab, PH, PW, sampling_ratio, aligned,
        reinterpret_cast<RoIGeomML<acc_t>*>(geom_bytes.data_ptr<uint8_t>()), key.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

std::vector<LevelTable> level_groups(int64_t L) {
  std::vector<LevelTable> g;
  for (int64_t first = 0; first < L; first += kLevelsPerLaunch)
    g.push_back(level_group(static_cast<int>(first), static_cast<int>(std::min<int64_t>(kLevelsPerLaunch, L - first))));
  return g;
}

at::Tensor multi_level_roi_align_cuda(at::TensorList features, const at::Tensor& boxes, const at::Tensor& levels,
                                      at::ArrayRef<double> spatial_scales, int64_t pooled_height,
                                      int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  check_multi_level_args(features, boxes, levels, spatial_scales, pooled_height, pooled_width);
  check_sampling_ratio(sampling_ratio);
  const at::Tensor& f0 = features[0];
  const c10::cuda::CUDAGuard guard(f0.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t K = boxes.size(0), N = f0.size(0), C = f0.size(1), L = static_cast<int64_t>(features.size());
  const int64_t PH = pooled_height, PW = pooled_width;
  at::Tensor out = at::empty({K, C, PH, PW}, f0.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const auto acc_type = accumulate_type_of(f0.scalar_type());
  const at::Tensor rois = boxes.to(acc_type).contiguous();
  const at::Tensor lv = levels.contiguous();
  bool channels_fastest = C > 1;
  for (const at::Tensor& f : features) channels_fastest = channels_fastest && f.stride(1) == 1;
  std::vector<LevelTable> groups = level_groups(L);
  for (LevelTable& tab : groups) {
    for (int i = 0; i < tab.count; ++i) {
      const at::Tensor& f = features[tab.first + i];
      tab.data[i] = f.data_ptr();
      tab.grad[i] = nullptr;
      tab.sN[i] = f.stride(0); tab.sC[i] = f.stride(1); tab.sH[i] = f.stride(2); tab.sW[i] = f.stride(3);
      tab.H[i] = f.size(2); tab.W[i] = f.size(3);
      tab.scale[i] = spatial_scales[tab.first + i];
    }
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f0.scalar_type(), "multi_level_roi_align_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor geom_bytes, key;
    compute_geometry<acc_t>(rois, lv, N, L, groups, PH, PW, sampling_ratio, aligned, geom_bytes, key, stream);
    const auto* geom = reinterpret_cast<const RoIGeomML<acc_t>*>(geom_bytes.data_ptr<uint8_t>());
    const unsigned int grid = blocks_for(out.numel(), kThreads);
    for (const LevelTable& tab : groups) {
      if (channels_fastest) {
        ml_forward_kernel<scalar_t, acc_t, true><<<grid, kThreads, 0, stream>>>(tab, geom, K, C, PH, PW,
                                                                                out.data_ptr<scalar_t>());
      } else {
        ml_forward_kernel<scalar_t, acc_t, false><<<grid, kThreads, 0, stream>>>(tab, geom, K, C, PH, PW,
                                                                                 out.data_ptr<scalar_t>());
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

std::vector<at::Tensor> multi_level_roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& boxes,
                                                            const at::Tensor& levels,
                                                            at::ArrayRef<double> spatial_scales,
                                                            int64_t pooled_height, int64_t pooled_width,
                                                            int64_t sampling_ratio, bool aligned, int64_t batch_size,
                                                            int64_t channels, at::IntArrayRef heights,
                                                            at::IntArrayRef widths) {
  // The checks of the CPU backward (csrc/cpu/multi_level_roi_align_cpu.cpp), same messages.
  const int64_t L = static_cast<int64_t>(heights.size());
  TORCH_CHECK_VALUE(L > 0 && widths.size() == heights.size() && spatial_scales.size() == heights.size(),
                    "heights, widths and spatial_scales must have one entry per level, got ", heights.size(), ", ",
                    widths.size(), " and ", spatial_scales.size());
  check_roi_pool_args(1.0, pooled_height, pooled_width);
  check_sampling_ratio(sampling_ratio);
  for (int64_t l = 0; l < L; ++l) {
    TORCH_CHECK_VALUE(heights[l] >= 0 && widths[l] >= 0, "heights and widths must be >= 0");
    TORCH_CHECK_VALUE(std::isfinite(spatial_scales[l]) && spatial_scales[l] > 0,
                      "spatial_scales must be finite numbers > 0, got ", spatial_scales[l]);
  }
  TORCH_CHECK_VALUE(batch_size >= 0 && channels >= 0, "batch_size and channels must be >= 0");
  check_floating(grad, "grad");
  check_roi_boxes(boxes, grad.scalar_type(), grad.device(), batch_size);
  check_roi_grad(grad, boxes, channels, pooled_height, pooled_width);
  TORCH_CHECK_TYPE(levels.scalar_type() == at::kLong, "levels must be an int64 tensor, got ", levels.scalar_type());
  TORCH_CHECK_VALUE(levels.dim() == 1 && levels.size(0) == boxes.size(0), "levels must be a Tensor[K], got shape ",
                    levels.sizes());
  check_same_device(levels, "levels", boxes, "boxes");

  const c10::cuda::CUDAGuard guard(grad.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t K = boxes.size(0), N = batch_size, C = channels, PH = pooled_height, PW = pooled_width;
  const auto acc_type = accumulate_type_of(grad.scalar_type());
  std::vector<at::Tensor> acc(L);
  bool any = false;
  for (int64_t l = 0; l < L; ++l) {
    acc[l] = at::zeros({N, C, heights[l], widths[l]}, grad.options().dtype(acc_type));
    any = any || acc[l].numel() > 0;
  }
  if (any && K > 0 && C > 0) {
    const at::Tensor rois = boxes.to(acc_type).contiguous();
    const at::Tensor g = grad.to(acc_type).contiguous();
    const at::Tensor lv = levels.contiguous();
    const bool deterministic = at::globalContext().deterministicAlgorithms();
    std::vector<LevelTable> groups = level_groups(L);
    for (LevelTable& tab : groups) {
      for (int i = 0; i < tab.count; ++i) {
        const int64_t l = tab.first + i;
        tab.data[i] = nullptr;
        tab.grad[i] = acc[l].data_ptr();
        tab.sN[i] = tab.sC[i] = tab.sH[i] = tab.sW[i] = 0;
        tab.H[i] = heights[l];
        tab.W[i] = widths[l];
        tab.scale[i] = spatial_scales[l];
      }
    }
    AT_DISPATCH_FLOATING_TYPES(acc_type, "multi_level_roi_align_backward_cuda", [&] {
      using acc_t = scalar_t;
      at::Tensor geom_bytes, key;
      compute_geometry<acc_t>(rois, lv, N, L, groups, PH, PW, sampling_ratio, aligned, geom_bytes, key, stream);
      const auto* geom = reinterpret_cast<const RoIGeomML<acc_t>*>(geom_bytes.data_ptr<uint8_t>());
      if (!deterministic) {
        for (const LevelTable& tab : groups) {
          ml_backward_atomic_kernel<acc_t><<<blocks_for(g.numel(), kThreads), kThreads, 0, stream>>>(
              g.data_ptr<acc_t>(), tab, geom, K, C, PH, PW);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        return;
      }
      // RoIs per (level, image) in increasing order: stable sort by key (invalid RoIs last).
      const auto sorted = at::sort(key, /*stable=*/true, /*dim=*/0, /*descending=*/false);
      const at::Tensor roi_order = std::get<1>(sorted).contiguous();
      const at::Tensor offsets =
          at::searchsorted(std::get<0>(sorted).contiguous(), at::arange(L * N + 1, key.options())).contiguous();
      for (const LevelTable& tab : groups) {
        ml_backward_owner_kernel<acc_t><<<blocks_for(tab.count * N * C, 64), 64, 0, stream>>>(
            g.data_ptr<acc_t>(), tab, geom, roi_order.data_ptr<int64_t>(), offsets.data_ptr<int64_t>(), N, C, PH,
            PW);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  }
  std::vector<at::Tensor> grads;
  grads.reserve(L);
  for (int64_t l = 0; l < L; ++l) grads.push_back(acc[l].to(grad.scalar_type()));
  return grads;
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CUDA, m) {
  m.impl("multi_level_roi_align", &pydetops::multi_level_roi_align_cuda);
  m.impl("_multi_level_roi_align_backward", &pydetops::multi_level_roi_align_backward_cuda);
}
