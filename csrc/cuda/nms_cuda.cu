// CUDA kernels of nms, batched_nms and soft_nms.
//
// nms / batched_nms: everything runs on the GPU; the only device-to-host copy
// is the number of kept boxes (inside at::nonzero).
//  1. Sort on the device: a 64-bit key per score whose increasing order is the
//     score order (decreasing, NaN last, -0.0 == +0.0), stable-sorted so ties
//     keep the lower index (batched_nms: then a stable sort by class, so each
//     class is one contiguous segment in score order).
//  2. The boxes are processed in column tiles of at most kTileBoxes boxes. For
//     tile t, a mask kernel
//       * ORs "IoU > threshold" of every KEPT box of the earlier tiles with the
//         tile's boxes into a per-tile "removed" bitset (atomicOr: OR is
//         order-independent, so the result is exact), and
//       * writes the IoU bitmask of the tile with itself (upper triangle, in
//         64-wide words).
//     Then a single-block sweep kernel runs the greedy pass over the tile in
//     64-box steps: one thread resolves the 64 boxes of a step from the
//     diagonal word (registers and shared memory only), then every thread ORs
//     the mask rows of the step's kept boxes into its word of "removed".
//     Memory is O(N) plus one tile's mask (<= kTileBoxes^2 / 8 bytes = 32 MB),
//     whatever N is (torchvision's full mask is N^2 / 8 bytes: 1.25 GB at 100k).
//     The host only enqueues ceil(N / kTileBoxes) x (memset + 2 kernels); it
//     never waits.
//  batched_nms sets mask bits only for pairs of the same class and skips every
//  64 x 64 block whose class ranges do not meet, so classes never interact and
//  coordinates are used as they are (no per-class offset trick).
//  IoU is computed as in iou_with_areas() (common/nms_math.h) with every
//  operation rounded on its own (__fmul_rn etc.: no FMA contraction), so each
//  decision is bit-for-bit the CPU kernel's.
//
// soft_nms: a single block of 1024 threads runs the sequential algorithm: each
// round selects the alive box with the highest score (ties: lower index) by a
// block reduction, then decays the others in parallel while computing the next
// round's candidate. O(N) rounds of O(N / 1024) work each.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "common/checks.h"
#include "common/nms_math.h"
#include "ops/nms.h"

namespace pydetops {
namespace {

using u64 = unsigned long long;

constexpr int kWordBits = 64;
constexpr int kMaxTileWords = 256;                        // words of one tile row
constexpr int64_t kTileBoxes = kWordBits * kMaxTileWords;  // 16384 boxes per column tile
constexpr int kSoftThreads = 1024;

// ------------------------------------------------ IoU without FMA contraction

__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ float div_rn(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double div_rn(double a, double b) { return __ddiv_rn(a, b); }

template <typename T>
__device__ __forceinline__ T area_exact(T x1, T y1, T x2, T y2) {
  return mul_rn(sub_rn(x2, x1), sub_rn(y2, y1));
}

// iou_with_areas() of common/nms_math.h, each operation rounded separately.
template <typename T>
__device__ __forceinline__ T iou_exact(T ax1, T ay1, T ax2, T ay2, T area_a, T bx1, T by1, T bx2, T by2, T area_b) {
  const T iw = max_of(sub_rn(min_of(ax2, bx2), max_of(ax1, bx1)), T(0));
  const T ih = max_of(sub_rn(min_of(ay2, by2), max_of(ay1, by1)), T(0));
  const T inter = mul_rn(iw, ih);
  return div_rn(inter, sub_rn(add_rn(area_a, area_b), inter));
}

inline unsigned int blocks_for(int64_t n, int threads) {
  return static_cast<unsigned int>(std::max<int64_t>(1, (n + threads - 1) / threads));
}

// ------------------------------------------------------------------ sorting

// key[i]: increasing order = decreasing score, NaN last, -0.0 == +0.0.
__global__ void descending_score_key_kernel(const double* __restrict__ scores, int64_t n, int64_t* __restrict__ key) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double s = scores[i];
    if (isnan(s)) {
      key[i] = INT64_MAX;
      continue;
    }
    s += 0.0;  // -0.0 -> +0.0
    const long long bits = __double_as_longlong(s);
    const long long ascending = bits >= 0 ? bits : (bits ^ 0x7FFFFFFFFFFFFFFFLL);  // float order as int order
    key[i] = ~ascending;  // reversed, never INT64_MAX
  }
}

at::Tensor descending_score_keys(const at::Tensor& scores, cudaStream_t stream) {
  const at::Tensor s = scores.to(at::kDouble).contiguous();
  const int64_t n = s.numel();
  at::Tensor key = at::empty({n}, s.options().dtype(at::kLong));
  if (n > 0) {
    descending_score_key_kernel<<<std::min<unsigned int>(blocks_for(n, 256), 65536u), 256, 0, stream>>>(
        s.data_ptr<double>(), n, key.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return key;
}

// Positions 0..n-1 in score order (stable: ties by lower index).
at::Tensor score_order(const at::Tensor& scores, cudaStream_t stream) {
  const at::Tensor key = descending_score_keys(scores, stream);
  return std::get<1>(at::sort(key, /*stable=*/true, /*dim=*/0, /*descending=*/false));
}

// ------------------------------------------------------------ greedy NMS core

// One 64 x 64 block of tile t: rows row0.. (boxes in processing order), columns
// col0 = tile_start + 64 * blockIdx.y. Rows of earlier tiles: OR of the kept
// rows into removed[blockIdx.y]; rows of the tile: mask words (upper triangle).
template <typename T>
__global__ void nms_mask_kernel(const T* __restrict__ boxes, const int64_t* __restrict__ cls, int64_t n,
                                int64_t tile_start, int64_t tile_len, int tile_words, T thr,
                                const uint8_t* __restrict__ keep, u64* __restrict__ mask, u64* __restrict__ removed) {
  __shared__ T col_box[kWordBits][5];
  __shared__ int64_t col_cls[kWordBits];
  __shared__ u64 warp_or[kWordBits / 32];
  const int t = threadIdx.x;
  const int cw = blockIdx.y;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kWordBits;
  const int64_t tile_end = tile_start + tile_len;
  const int64_t col0 = tile_start + static_cast<int64_t>(cw) * kWordBits;
  const int64_t col_end = std::min<int64_t>(col0 + kWordBits, tile_end);
  const bool earlier = row0 < tile_start;  // tile_start is a multiple of 64: no block straddles
  const int64_t row_end = std::min<int64_t>(row0 + kWordBits, earlier ? tile_start : tile_end);
  if (row0 >= row_end || col0 >= col_end) return;
  if (!earlier && (row0 - tile_start) / kWordBits > cw) return;  // below the diagonal: never read
  const int64_t i = row0 + t;
  bool row_live = i < row_end;
  if (earlier) {
    row_live = row_live && keep[i] != 0;
    if (!__syncthreads_or(row_live)) return;  // no kept box in this row block
  }
  bool skip = false;
  if (cls != nullptr) {  // sorted by class: the blocks' class ranges must meet
    skip = cls[row_end - 1] < cls[col0] || cls[col_end - 1] < cls[row0];
  }
  if (skip && earlier) return;
  u64 bits = 0;
  if (!skip) {
    const int64_t j = col0 + t;
    if (j < col_end) {
      const T* b = boxes + 4 * j;
      col_box[t][0] = b[0];
      col_box[t][1] = b[1];
      col_box[t][2] = b[2];
      col_box[t][3] = b[3];
      col_box[t][4] = area_exact(b[0], b[1], b[2], b[3]);
      col_cls[t] = cls != nullptr ? cls[j] : 0;
    }
    __syncthreads();
    if (row_live) {
      const T* a = boxes + 4 * i;
      const T ax1 = a[0], ay1 = a[1], ax2 = a[2], ay2 = a[3];
      const T area_a = area_exact(ax1, ay1, ax2, ay2);
      const int64_t ci = cls != nullptr ? cls[i] : 0;
      const int ncols = static_cast<int>(col_end - col0);
      for (int c = 0; c < ncols; ++c) {
        if (col0 + c <= i || col_cls[c] != ci) continue;
        const T iou = iou_exact(ax1, ay1, ax2, ay2, area_a, col_box[c][0], col_box[c][1], col_box[c][2],
                                col_box[c][3], col_box[c][4]);
        if (iou > thr) bits |= (u64(1) << c);
      }
    }
  }
  if (earlier) {
    for (int off = 16; off > 0; off >>= 1) bits |= __shfl_xor_sync(0xffffffffu, bits, off);
    if ((t & 31) == 0) warp_or[t >> 5] = bits;
    __syncthreads();
    if (t == 0) {
      const u64 word = warp_or[0] | warp_or[1];
      if (word != 0) atomicOr(removed + cw, word);
    }
  } else if (i < row_end) {
    mask[(i - tile_start) * tile_words + cw] = bits;
  }
}

// The greedy sweep over one tile. One block of kMaxTileWords threads; thread w
// owns word w of the tile's "removed" bitset.
__global__ void nms_sweep_kernel(const u64* __restrict__ mask, const u64* __restrict__ removed_in, int64_t tile_start,
                                 int64_t tile_len, int tile_words, uint8_t* __restrict__ keep) {
  __shared__ u64 rm[kMaxTileWords];
  __shared__ u64 diag[kWordBits];
  __shared__ u64 kept_bits;
  const int w = threadIdx.x;
  if (w < tile_words) rm[w] = removed_in[w];
  __syncthreads();
  for (int b = 0; b < tile_words; ++b) {
    const int rows = static_cast<int>(std::min<int64_t>(kWordBits, tile_len - static_cast<int64_t>(b) * kWordBits));
    const int64_t rbase = static_cast<int64_t>(b) * kWordBits;
    if (w < rows) diag[w] = mask[(rbase + w) * tile_words + b];
    __syncthreads();
    if (w == 0) {
      u64 r = rm[b], k = 0;
      for (int q = 0; q < rows; ++q) {
        if (!((r >> q) & 1ull)) {
          k |= u64(1) << q;
          r |= diag[q];
        }
      }
      kept_bits = k;
    }
    __syncthreads();
    const u64 k = kept_bits;
    if (w < rows) keep[tile_start + rbase + w] = static_cast<uint8_t>((k >> w) & 1ull);
    if (w > b && w < tile_words && k != 0) {
      u64 acc = 0;
      for (int q0 = 0; q0 < rows; q0 += 16) {
        u64 v[16];
#pragma unroll
        for (int u = 0; u < 16; ++u) {
          const int q = q0 + u;
          v[u] = (q < rows && ((k >> q) & 1ull)) ? mask[(rbase + q) * tile_words + w] : u64(0);
        }
#pragma unroll
        for (int u = 0; u < 16; ++u) acc |= v[u];
      }
      rm[w] |= acc;
    }
    // rm[b + 1] is read after the next iteration's first barrier.
  }
}

// keep[p] (uint8, n) for the boxes in processing order: boxes [n, 4] (T,
// contiguous); cls: their classes, sorted (or undefined for plain nms).
template <typename T>
at::Tensor greedy_nms_cuda(const at::Tensor& boxes, const at::Tensor& cls, T thr, cudaStream_t stream) {
  const int64_t n = boxes.size(0);
  at::Tensor keep = at::zeros({n}, boxes.options().dtype(at::kByte));
  if (n == 0) return keep;
  const int64_t tile_cap = std::min<int64_t>(kTileBoxes, (n + kWordBits - 1) / kWordBits * kWordBits);
  const int cap_words = static_cast<int>(tile_cap / kWordBits);
  at::Tensor mask = at::empty({tile_cap * cap_words}, boxes.options().dtype(at::kLong));
  at::Tensor removed = at::empty({kMaxTileWords}, boxes.options().dtype(at::kLong));
  u64* mask_p = reinterpret_cast<u64*>(mask.data_ptr<int64_t>());
  u64* removed_p = reinterpret_cast<u64*>(removed.data_ptr<int64_t>());
  const int64_t* cls_p = cls.defined() ? cls.data_ptr<int64_t>() : nullptr;
  for (int64_t tile_start = 0; tile_start < n; tile_start += kTileBoxes) {
    const int64_t tile_len = std::min<int64_t>(kTileBoxes, n - tile_start);
    const int tile_words = static_cast<int>((tile_len + kWordBits - 1) / kWordBits);
    C10_CUDA_CHECK(cudaMemsetAsync(removed_p, 0, sizeof(u64) * kMaxTileWords, stream));
    const int64_t row_blocks = (tile_start + tile_len + kWordBits - 1) / kWordBits;
    TORCH_CHECK(row_blocks < (int64_t(1) << 31), "nms: too many boxes for the CUDA kernel");
    const dim3 grid(static_cast<unsigned int>(row_blocks), static_cast<unsigned int>(tile_words));
    nms_mask_kernel<T><<<grid, kWordBits, 0, stream>>>(boxes.data_ptr<T>(), cls_p, n, tile_start, tile_len,
                                                       tile_words, thr, keep.data_ptr<uint8_t>(), mask_p, removed_p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    nms_sweep_kernel<<<1, kMaxTileWords, 0, stream>>>(mask_p, removed_p, tile_start, tile_len, tile_words,
                                                      keep.data_ptr<uint8_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return keep;
}

// Runs greedy_nms_cuda on the boxes in processing order `order` (original indices).
at::Tensor keep_in_order(const at::Tensor& boxes, const at::Tensor& order, const at::Tensor& cls_sorted,
                         double iou_threshold, cudaStream_t stream) {
  const at::Tensor b = boxes.to(accumulate_type_of(boxes.scalar_type())).index_select(0, order).contiguous();
  at::Tensor keep;
  AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "nms_cuda", [&] {
    keep = greedy_nms_cuda<scalar_t>(b, cls_sorted, threshold_for<scalar_t>(iou_threshold), stream);
  });
  return keep;
}

// ------------------------------------------------------------------------ nms

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_args(boxes, scores, iou_threshold);
  const c10::cuda::CUDAGuard guard(boxes.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  const at::Tensor order = score_order(scores, stream);
  const at::Tensor keep = keep_in_order(boxes, order, at::Tensor(), iou_threshold, stream);
  // The one device-to-host copy: the number of kept boxes.
  return order.index_select(0, at::nonzero(keep).view(-1));
}

// ---------------------------------------------------------------- batched_nms

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                            double iou_threshold) {
  check_batched_nms_args(boxes, scores, idxs, iou_threshold);
  const c10::cuda::CUDAGuard guard(boxes.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  // Score order, then (stable) class order: (class, score, index) order.
  const at::Tensor by_score = score_order(scores, stream);
  const at::Tensor cls_by_score = idxs.to(at::kLong).index_select(0, by_score);
  auto cls_sort = at::sort(cls_by_score, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor cls_sorted = std::get<0>(cls_sort).contiguous();
  const at::Tensor order = by_score.index_select(0, std::get<1>(cls_sort));
  const at::Tensor keep_sorted = keep_in_order(boxes, order, cls_sorted, iou_threshold, stream);
  // Back to input indices, then listed in score order.
  at::Tensor keep_input = at::empty({n}, keep_sorted.options());
  keep_input.index_copy_(0, order, keep_sorted);
  const at::Tensor keep_by_score = keep_input.index_select(0, by_score);
  return by_score.index_select(0, at::nonzero(keep_by_score).view(-1));
}

// ------------------------------------------------------------------- soft_nms

template <typename S>
struct Candidate {
  S score;
  int64_t idx;  // -1: none
};

// a before b: higher score, then lower index; "none" last.
template <typename S>
__device__ __forceinline__ bool better(const Candidate<S>& a, const Candidate<S>& b) {
  if (a.idx < 0) return false;
  if (b.idx < 0) return true;
  return a.score != b.score ? a.score > b.score : a.idx < b.idx;
}

template <typename S>
__device__ __forceinline__ Candidate<S> block_best(Candidate<S> c, Candidate<S>* warp_best) {
  for (int off = 16; off > 0; off >>= 1) {
    Candidate<S> o;
    o.score = __shfl_xor_sync(0xffffffffu, c.score, off);
    o.idx = __shfl_xor_sync(0xffffffffu, c.idx, off);
    if (better(o, c)) c = o;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_best[warp] = c;
  __syncthreads();
  Candidate<S> best = warp_best[0];
  for (int k = 1; k < static_cast<int>(blockDim.x >> 5); ++k)
    if (better(warp_best[k], best)) best = warp_best[k];
  __syncthreads();  // warp_best is free again
  return best;
}

// cur: the scores (S, modified in place); out_idx / out_score / out_count: the
// selected boxes in selection order. One block. __launch_bounds__: the launch
// needs <= 64 registers per thread (1024 threads x 64 = 65536, the per-block
// maximum); the <double, double, double> instance sits exactly at 64 on sm_90
// without it, so any other compiler/arch could fail the launch.
template <typename T, typename S, typename W>
__global__ void __launch_bounds__(kSoftThreads) soft_nms_kernel(const T* __restrict__ boxes, S* __restrict__ cur, uint8_t* __restrict__ alive,
                                int64_t n, W thr, W sigma, double score_threshold, SoftNmsMethod method,
                                int64_t* __restrict__ out_idx, S* __restrict__ out_score,
                                int64_t* __restrict__ out_count) {
  __shared__ Candidate<S> warp_best[kSoftThreads / 32];
  const int tid = threadIdx.x;
  Candidate<S> mine{S(0), -1};
  for (int64_t j = tid; j < n; j += blockDim.x) {
    const bool a = static_cast<double>(cur[j]) >= score_threshold;  // false for NaN
    alive[j] = a ? 1 : 0;
    const Candidate<S> c{cur[j], j};
    if (a && better(c, mine)) mine = c;
  }
  int64_t count = 0;
  while (true) {
    const Candidate<S> sel = block_best(mine, warp_best);
    if (sel.idx < 0) break;
    const int64_t s = sel.idx;
    // Every thread has read alive[s] (if at all) before the barrier in block_best.
    if (tid == 0) {
      alive[s] = 0;
      out_idx[count] = s;
      out_score[count] = sel.score;
    }
    ++count;
    const T sx1 = boxes[4 * s], sy1 = boxes[4 * s + 1], sx2 = boxes[4 * s + 2], sy2 = boxes[4 * s + 3];
    const T sarea = area_exact(sx1, sy1, sx2, sy2);
    mine = Candidate<S>{S(0), -1};
    for (int64_t j = tid; j < n; j += blockDim.x) {
      if (j == s || !alive[j]) continue;
      const T* b = boxes + 4 * j;
      const T iou = iou_exact(sx1, sy1, sx2, sy2, sarea, b[0], b[1], b[2], b[3], area_exact(b[0], b[1], b[2], b[3]));
      const W w = soft_nms_weight<W>(method, static_cast<W>(iou), thr, sigma);
      if (w != W(1)) {
        const S s_new = static_cast<S>(mul_rn(static_cast<W>(cur[j]), w));
        if (method == SoftNmsMethod::Hard || !(static_cast<double>(s_new) >= score_threshold)) {
          alive[j] = 0;
          continue;
        }
        cur[j] = s_new;
      }
      const Candidate<S> c{cur[j], j};
      if (better(c, mine)) mine = c;
    }
  }
  if (tid == 0) *out_count = count;
}

std::tuple<at::Tensor, at::Tensor> soft_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                                                 double iou_threshold, double sigma, double score_threshold,
                                                 c10::string_view method_name) {
  check_soft_nms_args(boxes, scores, iou_threshold, sigma, score_threshold, method_name);
  const SoftNmsMethod method = parse_soft_nms_method(method_name);
  const c10::cuda::CUDAGuard guard(boxes.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t n = boxes.size(0);
  const at::Tensor b = boxes.to(accumulate_type_of(boxes.scalar_type())).contiguous();
  // A fresh copy: the kernel decays it in place.
  at::Tensor cur = scores.to(accumulate_type_of(scores.scalar_type()), /*non_blocking=*/false, /*copy=*/true)
                       .contiguous();
  at::Tensor alive = at::empty({n}, boxes.options().dtype(at::kByte));
  at::Tensor out_idx = at::empty({n}, boxes.options().dtype(at::kLong));
  at::Tensor out_score = at::empty({n}, cur.options());
  at::Tensor out_count = at::zeros({1}, boxes.options().dtype(at::kLong));
  if (n > 0) {
    AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "soft_nms_cuda", [&] {
      using T = scalar_t;
      AT_DISPATCH_FLOATING_TYPES(cur.scalar_type(), "soft_nms_cuda_scores", [&] {
        using S = scalar_t;
        using W = typename std::conditional<std::is_same<T, double>::value || std::is_same<S, double>::value,
                                            double, float>::type;
        soft_nms_kernel<T, S, W><<<1, kSoftThreads, 0, stream>>>(
            b.data_ptr<T>(), cur.data_ptr<S>(), alive.data_ptr<uint8_t>(), n, threshold_for<W>(iou_threshold),
            static_cast<W>(sigma), score_threshold, method, out_idx.data_ptr<int64_t>(), out_score.data_ptr<S>(),
            out_count.data_ptr<int64_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  // The one device-to-host copy: the number of selected boxes.
  const int64_t kept = out_count.item<int64_t>();
  return {out_idx.slice(0, 0, kept), out_score.slice(0, 0, kept).to(scores.scalar_type())};
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CUDA, m) {
  m.impl("nms", &pydetops::nms_cuda);
  m.impl("batched_nms", &pydetops::batched_nms_cuda);
  m.impl("soft_nms", &pydetops::soft_nms_cuda);
}
