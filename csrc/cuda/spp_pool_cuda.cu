// CUDA kernels of spp_pool (spatial pyramid max pooling of RoIs) and its
// backward, on the bin geometry of common/roi_pool_bins.h shared with the CPU
// kernel (rounded RoI, inclusive end, bins clipped to the map).
//
// Output layout (as the CPU kernel): per RoI, level after level, each level
// [C, l, l]: element (k, c, level, p) at k * C * cells + C * offset(level) +
// c * l * l + p, offset(level) = sum of l'^2 over the previous levels.
//
// Forward: one launch per level, one thread per output element; the input is
// read in place through its strides (channels-last needs no copy). Ties keep
// the first maximum in row-major order, a NaN makes the bin NaN (the first
// NaN's position is the argmax), an empty bin gives 0 and argmax -1: the CPU
// kernel's rules, so output and argmax are identical to the CPU's.
// Backward (a scatter of grad by argmax):
//  * default: one launch per level, one thread per grad element, atomicAdd
//    into an accumulator in the accumulate type;
//  * deterministic (torch.use_deterministic_algorithms(True)): one thread per
//    grad_input plane (image, channel), visiting the image's RoIs in
//    increasing order and, in each, the levels and bins in order: the CPU
//    kernel's additions in the CPU kernel's order (bit-identical) when there
//    are at most kInlineLevels levels (more: groups of levels one after the
//    other; deterministic, summed in a different order).
// The batch indices are checked by check_roi_batch_indices (one small
// device-to-host copy, as the CPU path raises on them too).
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "common/checks.h"
#include "common/roi_pool_bins.h"
#include "cuda/roi_groups_cuda.h"
#include "ops/psroi_spp_common.h"
#include "ops/spp_pool.h"

namespace pydetops {
namespace {

constexpr int kThreads = 256;
constexpr int kInlineLevels = 32;

inline unsigned int blocks_for(int64_t n, int threads) {
  return static_cast<unsigned int>(std::min<int64_t>(std::max<int64_t>(1, (n + threads - 1) / threads), 1 << 30));
}

// Forward of one level l (cells: sum of l'^2 over all levels; level_offset:
// over the previous ones). Input [N, C, H, W] through strides.
template <typename scalar_t, typename acc_t>
__global__ void spp_forward_level_kernel(const scalar_t* __restrict__ input, int64_t sN, int64_t sC, int64_t sH,
                                         int64_t sW, int64_t H, int64_t W, const acc_t* __restrict__ rois,
                                         acc_t scale, int64_t K, int64_t C, int64_t cells, int64_t l,
                                         int64_t level_offset, scalar_t* __restrict__ out,
                                         int32_t* __restrict__ argmax) {
  const int64_t ll = l * l;
  const int64_t total = K * C * ll;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t p = idx % ll;
    const int64_t c = (idx / ll) % C;
    const int64_t k = idx / (ll * C);
    const acc_t* r = rois + 5 * k;
    const int64_t o = k * C * cells + C * level_offset + c * ll + p;
    const RoundedRoi rr = rounded_roi(r[1], r[2], r[3], r[4], scale, /*end_offset=*/1);
    acc_t best = 0;
    int32_t best_idx = -1;
    if (rr.valid) {
      const BinRange hr = pool_bin_range<acc_t>(rr.y0, rr.height, l, p / l, H);
      const BinRange wr = pool_bin_range<acc_t>(rr.x0, rr.width, l, p % l, W);
      const scalar_t* plane = input + static_cast<int64_t>(r[0]) * sN + c * sC;
      for (int64_t h = hr.start; h < hr.end; ++h) {
        for (int64_t w = wr.start; w < wr.end; ++w) {
          const acc_t v = static_cast<acc_t>(plane[h * sH + w * sW]);
          if (best_idx < 0 || v > best || v != v) {
            if (best_idx >= 0 && best != best) continue;  // keep the first NaN
            best = v;
            best_idx = static_cast<int32_t>(h * W + w);
          }
        }
      }
    }
    out[o] = static_cast<scalar_t>(best);
    argmax[o] = best_idx;
  }
}

// Default backward of one level: gi [N, C, H, W] acc_t, zero-filled.
template <typename acc_t>
__global__ void spp_backward_level_atomic_kernel(const acc_t* __restrict__ grad, const int32_t* __restrict__ argmax,
                                                 const acc_t* __restrict__ rois, int64_t K, int64_t C,
                                                 int64_t plane_size, int64_t cells, int64_t l, int64_t level_offset,
                                                 acc_t* __restrict__ gi) {
  const int64_t ll = l * l;
  const int64_t total = K * C * ll;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t p = idx % ll;
    const int64_t c = (idx / ll) % C;
    const int64_t k = idx / (ll * C);
    const int64_t o = k * C * cells + C * level_offset + c * ll + p;
    const int64_t a = argmax[o];
    // Out-of-range entries (only possible in a hand-made argmax) are ignored, as on the CPU.
    if (a < 0 || a >= plane_size) continue;
    const int64_t b = static_cast<int64_t>(rois[5 * k]);
    atomicAdd(gi + (b * C + c) * plane_size + a, grad[o]);
  }
}

// Up to kInlineLevels levels passed by value (no device table, no copy).
struct LevelGroup {
  int count;
  int64_t first_offset;  // sum of l^2 over the levels before the group
  int64_t l[kInlineLevels];
};

// Deterministic backward: one thread per plane (n, c) of gi (acc_t,
// zero-filled), RoIs of image n in increasing order, then the group's levels
// and bins in order.
template <typename acc_t>
__global__ void spp_backward_owner_kernel(const acc_t* __restrict__ grad, const int32_t* __restrict__ argmax,
                                          const int64_t* __restrict__ roi_order, const int64_t* __restrict__ offsets,
                                          int64_t N, int64_t C, int64_t plane_size, int64_t cells, LevelGroup levels,
                                          acc_t* __restrict__ gi) {
  const int64_t total = N * C;
  for (int64_t item = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; item < total;
       item += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = item / C, c = item % C;
    acc_t* plane = gi + item * plane_size;
    for (int64_t q = offsets[n]; q < offsets[n + 1]; ++q) {
      const int64_t k = roi_order[q];
      int64_t level_offset = levels.first_offset;
      for (int li = 0; li < levels.count; ++li) {
        const int64_t ll = levels.l[li] * levels.l[li];
        const int64_t base = k * C * cells + C * level_offset + c * ll;
        for (int64_t p = 0; p < ll; ++p) {
          const int64_t a = argmax[base + p];
          if (a >= 0 && a < plane_size) plane[a] += grad[base + p];
        }
        level_offset += ll;
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor> spp_pool_cuda(const at::Tensor& input, const at::Tensor& rois,
                                                 at::IntArrayRef levels, double spatial_scale) {
  const int64_t cells = check_spp_args(input, rois, levels, spatial_scale);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto acc_type = accumulate_type_of(input.scalar_type());
  const at::Tensor r = rois.to(acc_type).contiguous();
  check_roi_batch_indices(r, input.size(0));
  const int64_t K = rois.size(0), C = input.size(1);
  at::Tensor output = at::empty({K, C * cells}, input.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor argmax = at::empty({K, C * cells}, output.options().dtype(at::kInt));
  if (output.numel() == 0) return {output, argmax};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "spp_pool_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    int64_t level_offset = 0;
    for (const int64_t l : levels) {
      spp_forward_level_kernel<scalar_t, acc_t><<<blocks_for(K * C * l * l, kThreads), kThreads, 0, stream>>>(
          input.data_ptr<scalar_t>(), input.stride(0), input.stride(1), input.stride(2), input.stride(3),
          input.size(2), input.size(3), r.data_ptr<acc_t>(), static_cast<acc_t>(spatial_scale), K, C, cells, l,
          level_offset, output.data_ptr<scalar_t>(), argmax.data_ptr<int32_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      level_offset += l * l;
    }
  });
  return {output, argmax};
}

// The checks of the CPU backward (csrc/cpu/spp_pool_cpu.cpp), same messages;
// returns cells = sum(l * l).
int64_t check_spp_backward_args(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax,
                                at::IntArrayRef levels, int64_t batch_size, int64_t channels, int64_t height,
                                int64_t width) {
  TORCH_CHECK_VALUE(batch_size >= 0 && channels >= 0 && height >= 0 && width >= 0,
                    "_spp_pool_backward: the input sizes must be >= 0");
  check_roi_op_rois(rois, grad);
  TORCH_CHECK_VALUE(!levels.empty(), "levels must hold at least one pyramid level");
  int64_t cells = 0;
  for (const int64_t l : levels) {
    TORCH_CHECK_VALUE(l > 0 && l <= 4096, "levels must be positive grid sizes (at most 4096), got ", levels);
    cells += l * l;
  }
  check_roi_op_grad(grad, {rois.size(0), channels * cells}, "_spp_pool_backward");
  TORCH_CHECK_VALUE(argmax.sizes() == grad.sizes() && argmax.scalar_type() == at::kInt,
                    "_spp_pool_backward: argmax must be an int32 tensor shaped like grad, got ", argmax.scalar_type(),
                    " ", argmax.sizes());
  check_same_device(grad, "grad", argmax, "argmax");
  return cells;
}

at::Tensor spp_pool_backward_cuda(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax,
                                  at::IntArrayRef levels, int64_t batch_size, int64_t channels, int64_t height,
                                  int64_t width) {
  const int64_t cells =
      check_spp_backward_args(grad, rois, argmax, levels, batch_size, channels, height, width);
  const c10::cuda::CUDAGuard guard(grad.device());
  const auto acc_type = accumulate_type_of(grad.scalar_type());
  const at::Tensor r = rois.to(acc_type).contiguous();
  check_roi_batch_indices(r, batch_size);
  at::Tensor gi = at::zeros({batch_size, channels, height, width}, grad.options().dtype(acc_type));
  if (grad.numel() > 0 && gi.numel() > 0) {
    const at::Tensor g = grad.to(acc_type).contiguous();
    const at::Tensor am = argmax.contiguous();
    const int64_t K = rois.size(0), plane_size = height * width;
    const bool deterministic = at::globalContext().deterministicAlgorithms();
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(acc_type, "spp_pool_backward_cuda", [&] {
      using acc_t = scalar_t;
      if (!deterministic) {
        int64_t level_offset = 0;
        for (const int64_t l : levels) {
          spp_backward_level_atomic_kernel<acc_t><<<blocks_for(K * channels * l * l, kThreads), kThreads, 0, stream>>>(
              g.data_ptr<acc_t>(), am.data_ptr<int32_t>(), r.data_ptr<acc_t>(), K, channels, plane_size, cells, l,
              level_offset, gi.data_ptr<acc_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          level_offset += l * l;
        }
      } else {
        const auto groups = cuda_rois_by_image(r, batch_size);
        int64_t level_offset = 0;
        for (size_t first = 0; first < levels.size(); first += kInlineLevels) {
          LevelGroup lg;
          lg.count = static_cast<int>(std::min<size_t>(kInlineLevels, levels.size() - first));
          lg.first_offset = level_offset;
          for (int i = 0; i < lg.count; ++i) {
            lg.l[i] = levels[first + i];
            level_offset += lg.l[i] * lg.l[i];
          }
          for (int i = lg.count; i < kInlineLevels; ++i) lg.l[i] = 0;
          spp_backward_owner_kernel<acc_t><<<blocks_for(batch_size * channels, 64), 64, 0, stream>>>(
              g.data_ptr<acc_t>(), am.data_ptr<int32_t>(), groups.first.data_ptr<int64_t>(),
              groups.second.data_ptr<int64_t>(), batch_size, channels, plane_size, cells, lg, gi.data_ptr<acc_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      }
    });
  }
  return gi.to(grad.scalar_type());
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CUDA, m) {
  m.impl("spp_pool", &pydetops::spp_pool_cuda);
  m.impl("_spp_pool_backward", &pydetops::spp_pool_backward_cuda);
}
