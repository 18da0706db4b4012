// CUDA kernels of box_overlaps and its backward.
//
// Forward, matrix form: a block computes a 64 x 64 tile of the N x M output.
// The tile's 64 boxes2 and 64 boxes1 are staged in shared memory (one
// coalesced load each); thread x owns a column, so every row of the tile is
// written by consecutive threads to consecutive addresses (coalesced).
// Forward, aligned form: one thread per pair.
// Per-box terms (common/box_overlap_math.h, BoxTerms) are computed once per box
// of the tile; CIoU's atan(w/h) comes precomputed per box from torch's atan
// (box_angles), as in the CPU kernel (and as torchvision gets it from torch.atan).
//
// Backward, matrix form, deterministic and without atomics:
//  * grad1[i] = sum_j d(out[i, j])/d(boxes1[i]) is a row reduction: a warp per
//    row, lanes over the columns of a fixed chunk, then a butterfly shuffle;
//  * grad2[j] = sum_i d(out[i, j])/d(boxes2[j]) is a column reduction: a thread
//    per column (coalesced reads of grad), eight row phases summed in order in
//    shared memory.
//  Both split the reduced axis into fixed chunks (kChunk) whose partial sums
//  are added in chunk order by a second small kernel, so the result does not
//  depend on the GPU or the launch configuration. Zero grad entries are skipped
//  as on the CPU.
// Indices into N x M arrays are 64-bit.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>

#include "common/box_overlap_math.h"
#include "common/checks.h"
#include "ops/box_overlaps.h"

namespace pydetops {
namespace {

constexpr int kTile = 64;         // forward tile: kTile x kTile outputs
constexpr int kTileRowsPerThread = 16;  // blockDim = (kTile, kTile / 16)
constexpr int64_t kChunk = 2048;  // backward: reduced-axis chunk
constexpr int kMaxGridY = 65535;

template <typename F>
void dispatch_mode(OverlapMode mode, F&& f) {
  switch (mode) {
    case OverlapMode::IoU: f(std::integral_constant<OverlapMode, OverlapMode::IoU>{}); break;
    case OverlapMode::IoF: f(std::integral_constant<OverlapMode, OverlapMode::IoF>{}); break;
    case OverlapMode::GIoU: f(std::integral_constant<OverlapMode, OverlapMode::GIoU>{}); break;
    case OverlapMode::DIoU: f(std::integral_constant<OverlapMode, OverlapMode::DIoU>{}); break;
    case OverlapMode::CIoU: f(std::integral_constant<OverlapMode, OverlapMode::CIoU>{}); break;
  }
}

inline unsigned int blocks_for(int64_t n, int threads) {
  return static_cast<unsigned int>(std::max<int64_t>(1, (n + threads - 1) / threads));
}

// ---------------------------------------------------------------- forward

// atan(w / h) of every box for CIoU (torch's atan on the device, one per box);
// undefined for the other modes.
at::Tensor box_angles(const at::Tensor& boxes, OverlapMode mode) {
  if (mode != OverlapMode::CIoU) return at::Tensor();
  return at::atan((boxes.select(1, 2) - boxes.select(1, 0)) / (boxes.select(1, 3) - boxes.select(1, 1))).contiguous();
}

template <typename acc_t>
const acc_t* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<acc_t>() : nullptr;
}

// The terms of box i of boxes (angles: per-box atan, CIoU only).
template <OverlapMode kMode, typename acc_t>
__device__ inline BoxTerms<acc_t> terms_of(const acc_t* boxes, const acc_t* angles, int64_t i) {
  const acc_t* p = boxes + 4 * i;
  BoxTerms<acc_t> t = box_terms<OverlapMode::DIoU, acc_t>(p[0], p[1], p[2], p[3]);  // all but the angle
  if (kMode == OverlapMode::CIoU) t.angle = angles[i];
  return t;
}

// a: [n, 4], b: [m, 4] (acc_t, contiguous), ang_a / ang_b their angles (CIoU);
// out: [n, m].
template <OverlapMode kMode, typename acc_t>
__global__ void overlap_matrix_kernel(const acc_t* __restrict__ a, const acc_t* __restrict__ ang_a,
                                      const acc_t* __restrict__ b, const acc_t* __restrict__ ang_b, int64_t n,
                                      int64_t m, acc_t eps, acc_t* __restrict__ out) {
  __shared__ BoxTerms<acc_t> sa[kTile];  // terms of the tile's boxes1
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int tid = ty * kTile + tx;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kTile + tx;
  // Every thread row holds the terms of its column's box2 in registers.
  BoxTerms<acc_t> bt{};
  if (j < m) bt = terms_of<kMode, acc_t>(b, ang_b, j);
  const int64_t row_tiles = (n + kTile - 1) / kTile;
  for (int64_t rt = blockIdx.y; rt < row_tiles; rt += gridDim.y) {
    const int64_t i0 = rt * kTile;
    __syncthreads();  // the previous tile is done with sa
    if (tid < kTile && i0 + tid < n) sa[tid] = terms_of<kMode, acc_t>(a, ang_a, i0 + tid);
    __syncthreads();
    if (j < m) {
#pragma unroll 4
      for (int r = 0; r < kTileRowsPerThread; ++r) {
        const int li = ty * kTileRowsPerThread + r;
        const int64_t i = i0 + li;
        if (i < n) out[i * m + j] = box_overlap_terms<kMode, false, acc_t>(sa[li], bt, eps);
      }
    }
  }
}

template <OverlapMode kMode, typename acc_t, typename out_t>
__global__ void overlap_aligned_kernel(const acc_t* __restrict__ a, const acc_t* __restrict__ ang_a,
                                       const acc_t* __restrict__ b, const acc_t* __restrict__ ang_b, int64_t n,
                                       acc_t eps, out_t* __restrict__ out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = static_cast<out_t>(box_overlap_terms<kMode, true, acc_t>(terms_of<kMode, acc_t>(a, ang_a, i),
                                                                     terms_of<kMode, acc_t>(b, ang_b, i), eps));
  }
}

at::Tensor box_overlaps_cuda(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view mode_name,
                             bool aligned, double eps) {
  check_box_overlaps_args(boxes1, boxes2, aligned, eps);
  const OverlapMode mode = parse_overlap_mode(mode_name);
  const c10::cuda::CUDAGuard guard(boxes1.device());
  const auto acc_type = box_overlaps_compute_type(boxes1.scalar_type());
  const auto out_type = box_overlaps_result_type(boxes1.scalar_type(), aligned);
  // Integer boxes compute (and are stored) in float64, then cast to out_type.
  const auto store_type = acc_type == at::kDouble ? at::kDouble : out_type;
  const int64_t n = boxes1.size(0), m = boxes2.size(0);
  at::Tensor out = at::empty(aligned ? at::IntArrayRef{n} : at::IntArrayRef{n, m}, boxes1.options().dtype(store_type));
  if (out.numel() == 0) return out.to(out_type);
  const at::Tensor a = boxes1.to(acc_type).contiguous();
  const at::Tensor b = boxes2.to(acc_type).contiguous();
  const at::Tensor ang_a = box_angles(a, mode), ang_b = box_angles(b, mode);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES(acc_type, "box_overlaps_cuda", [&] {
    using acc_t = scalar_t;
    const acc_t e = static_cast<acc_t>(eps);
    dispatch_mode(mode, [&](auto mode_tag) {
      constexpr OverlapMode kMode = decltype(mode_tag)::value;
      if (aligned) {
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, store_type, "box_overlaps_cuda_out", [&] {
          const unsigned int grid = std::min<unsigned int>(blocks_for(n, 256), 65536u);
          overlap_aligned_kernel<kMode, acc_t, scalar_t><<<grid, 256, 0, stream>>>(
              a.data_ptr<acc_t>(), data_or_null<acc_t>(ang_a), b.data_ptr<acc_t>(), data_or_null<acc_t>(ang_b), n, e,
              out.data_ptr<scalar_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      } else {
        // Matrix outputs are float32 or float64, i.e. always acc_t.
        const dim3 block(kTile, kTile / kTileRowsPerThread);
        const dim3 grid(blocks_for(m, kTile),
                        static_cast<unsigned int>(std::min<int64_t>((n + kTile - 1) / kTile, kMaxGridY)));
        overlap_matrix_kernel<kMode, acc_t><<<grid, block, 0, stream>>>(
            a.data_ptr<acc_t>(), data_or_null<acc_t>(ang_a), b.data_ptr<acc_t>(), data_or_null<acc_t>(ang_b), n, m, e,
            out.data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  });
  return out.to(out_type);
}

// ---------------------------------------------------------------- backward

template <typename acc_t>
__device__ inline acc_t warp_sum(acc_t v) {
  // Butterfly: every lane ends with the same, fixed-order sum.
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Row reduction: partial[c][i][k] = sum over the columns j of chunk c of
// d out[i, j] / d boxes1[i][k]. Block (32, 8): a warp per row.
template <OverlapMode kMode, typename acc_t>
__global__ void matrix_backward_rows_kernel(const acc_t* __restrict__ g, const acc_t* __restrict__ a,
                                            const acc_t* __restrict__ b, int64_t n, int64_t m, acc_t eps,
                                            acc_t* __restrict__ partial) {
  const int64_t chunks = (m + kChunk - 1) / kChunk;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (i >= n) return;  // whole warps leave together
  const int lane = threadIdx.x;
  acc_t ai[4];
  for (int k = 0; k < 4; ++k) ai[k] = a[4 * i + k];
  for (int64_t c = blockIdx.y; c < chunks; c += gridDim.y) {
    acc_t ga[4] = {0, 0, 0, 0};
    const int64_t j_end = std::min(m, (c + 1) * kChunk);
    for (int64_t j = c * kChunk + lane; j < j_end; j += 32) {
      const acc_t gij = g[i * m + j];
      if (gij == acc_t(0)) continue;
      acc_t bj[4] = {b[4 * j], b[4 * j + 1], b[4 * j + 2], b[4 * j + 3]};
      acc_t unused[4] = {0, 0, 0, 0};
      box_overlap_backward<kMode, false, acc_t>(ai, bj, eps, gij, ga, unused);
    }
    for (int k = 0; k < 4; ++k) ga[k] = warp_sum(ga[k]);
    if (lane == 0)
      for (int k = 0; k < 4; ++k) partial[(c * n + i) * 4 + k] = ga[k];
  }
}

// Column reduction: partial[c][j][k] = sum over the rows i of chunk c of
// d out[i, j] / d boxes2[j][k]. Block (32, 8): thread x a column, the 8
// thread rows take rows i = ty, ty + 8, ... of the chunk and are summed in order.
template <OverlapMode kMode, typename acc_t>
__global__ void matrix_backward_cols_kernel(const acc_t* __restrict__ g, const acc_t* __restrict__ a,
                                            const acc_t* __restrict__ b, int64_t n, int64_t m, acc_t eps,
                                            acc_t* __restrict__ partial) {
  __shared__ acc_t part[8][32][4];
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * 32 + tx;
  acc_t bj[4] = {0, 0, 0, 0};
  if (j < m)
    for (int k = 0; k < 4; ++k) bj[k] = b[4 * j + k];
  for (int64_t c = blockIdx.y; c < chunks; c += gridDim.y) {
    acc_t gb[4] = {0, 0, 0, 0};
    if (j < m) {
      const int64_t i_end = std::min(n, (c + 1) * kChunk);
      for (int64_t i = c * kChunk + ty; i < i_end; i += 8) {
        const acc_t gij = g[i * m + j];
        if (gij == acc_t(0)) continue;
        acc_t ai[4] = {a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]};
        acc_t unused[4] = {0, 0, 0, 0};
        box_overlap_backward<kMode, false, acc_t>(ai, bj, eps, gij, unused, gb);
      }
    }
    __syncthreads();  // part[] free from the previous chunk
    for (int k = 0; k < 4; ++k) part[ty][tx][k] = gb[k];
    __syncthreads();
    if (ty < 4 && j < m) {  // thread row k sums coordinate k over the 8 thread rows, in order
      acc_t s = 0;
      for (int r = 0; r < 8; ++r) s += part[r][tx][ty];
      partial[(c * m + j) * 4 + ty] = s;
    }
  }
}

// out[e] = sum_c partial[c][e] in chunk order, e over count = rows * 4 values.
template <typename acc_t>
__global__ void sum_chunks_kernel(const acc_t* __restrict__ partial, int64_t chunks, int64_t count,
                                  acc_t* __restrict__ out) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < count;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc_t s = 0;
    for (int64_t c = 0; c < chunks; ++c) s += partial[c * count + e];
    out[e] = s;
  }
}

template <OverlapMode kMode, typename acc_t>
__global__ void aligned_backward_kernel(const acc_t* __restrict__ g, const acc_t* __restrict__ a,
                                        const acc_t* __restrict__ b, int64_t n, acc_t eps, acc_t* __restrict__ grad_a,
                                        acc_t* __restrict__ grad_b) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc_t ai[4] = {a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]};
    acc_t bi[4] = {b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]};
    acc_t ga[4] = {0, 0, 0, 0}, gb[4] = {0, 0, 0, 0};
    box_overlap_backward<kMode, true, acc_t>(ai, bi, eps, g[i], ga, gb);
    for (int k = 0; k < 4; ++k) {
      grad_a[4 * i + k] = ga[k];
      grad_b[4 * i + k] = gb[k];
    }
  }
}

// Reduces over chunks (partial: [chunks, rows, 4]) into out ([rows, 4]); with
// one chunk the partial already is the result.
template <typename acc_t>
void finish_chunks(const at::Tensor& partial, int64_t chunks, at::Tensor& out, cudaStream_t stream) {
  if (chunks == 1) {
    out.copy_(partial.view_as(out));
    return;
  }
  const int64_t count = out.numel();
  const unsigned int grid = std::min<unsigned int>(blocks_for(count, 256), 65536u);
  sum_chunks_kernel<acc_t><<<grid, 256, 0, stream>>>(partial.data_ptr<acc_t>(), chunks, count,
                                                     out.data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> box_overlaps_backward_cuda(const at::Tensor& grad, const at::Tensor& boxes1,
                                                              const at::Tensor& boxes2, c10::string_view mode_name,
                                                              bool aligned, double eps) {
  check_box_overlaps_args(boxes1, boxes2, aligned, eps);
  const OverlapMode mode = parse_overlap_mode(mode_name);
  const int64_t n = boxes1.size(0), m = boxes2.size(0);
  TORCH_CHECK_VALUE(aligned ? grad.numel() == n : (grad.dim() == 2 && grad.size(0) == n && grad.size(1) == m),
                    "grad must have the shape of box_overlaps' output, got ", grad.sizes());
  check_same_device(grad, "grad", boxes1, "boxes1");
  const c10::cuda::CUDAGuard guard(boxes1.device());
  const auto acc_type = accumulate_type_of(boxes1.scalar_type());
  const at::Tensor a = boxes1.to(acc_type).contiguous();
  const at::Tensor b = boxes2.to(acc_type).contiguous();
  const at::Tensor g = grad.to(acc_type).contiguous();
  at::Tensor grad_a = at::zeros({n, 4}, a.options());
  at::Tensor grad_b = at::zeros({m, 4}, a.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (n > 0 && m > 0) {
    AT_DISPATCH_FLOATING_TYPES(acc_type, "box_overlaps_backward_cuda", [&] {
      using acc_t = scalar_t;
      const acc_t e = static_cast<acc_t>(eps);
      dispatch_mode(mode, [&](auto mode_tag) {
        constexpr OverlapMode kMode = decltype(mode_tag)::value;
        if (aligned) {
          const unsigned int grid = std::min<unsigned int>(blocks_for(n, 256), 65536u);
          aligned_backward_kernel<kMode, acc_t><<<grid, 256, 0, stream>>>(
              g.data_ptr<acc_t>(), a.data_ptr<acc_t>(), b.data_ptr<acc_t>(), n, e, grad_a.data_ptr<acc_t>(),
              grad_b.data_ptr<acc_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          return;
        }
        // grad1: row reduction over chunks of columns.
        const int64_t col_chunks = (m + kChunk - 1) / kChunk;
        at::Tensor part_a = at::empty({col_chunks, n, 4}, a.options());
        {
          const dim3 block(32, 8);
          const dim3 grid(blocks_for(n, 8), static_cast<unsigned int>(std::min<int64_t>(col_chunks, kMaxGridY)));
          matrix_backward_rows_kernel<kMode, acc_t><<<grid, block, 0, stream>>>(
              g.data_ptr<acc_t>(), a.data_ptr<acc_t>(), b.data_ptr<acc_t>(), n, m, e, part_a.data_ptr<acc_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        finish_chunks<acc_t>(part_a, col_chunks, grad_a, stream);
        // grad2: column reduction over chunks of rows.
        const int64_t row_chunks = (n + kChunk - 1) / kChunk;
        at::Tensor part_b = at::empty({row_chunks, m, 4}, a.options());
        {
          const dim3 block(32, 8);
          const dim3 grid(blocks_for(m, 32), static_cast<unsigned int>(std::min<int64_t>(row_chunks, kMaxGridY)));
          matrix_backward_cols_kernel<kMode, acc_t><<<grid, block, 0, stream>>>(
              g.data_ptr<acc_t>(), a.data_ptr<acc_t>(), b.data_ptr<acc_t>(), n, m, e, part_b.data_ptr<acc_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        finish_chunks<acc_t>(part_b, row_chunks, grad_b, stream);
      });
    });
  }
  return {grad_a.to(boxes1.scalar_type()), grad_b.to(boxes2.scalar_type())};
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CUDA, m) {
  m.impl("box_overlaps", &pydetops::box_overlaps_cuda);
  m.impl("_box_overlaps_backward", &pydetops::box_overlaps_backward_cuda);
}
