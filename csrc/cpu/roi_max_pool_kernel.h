// CPU helper shared by the quantised RoI max poolings (roi_pool, spp_pool):
// max and first argmax over rectangular bins of one block of channels.
//
// The block is a per-thread copy of kMaxVecs vectors of channels per pixel,
// stored (H, W, block) in the accumulate type, so that one pixel of the block
// is kMaxVecs aligned vectors. A bin is swept in row-major order with
// kMaxVecs independent (max, argmax) accumulators held in registers (GCC
// vector extensions: 8 floats or 4 doubles a vector), branch-free. Visiting
// the cells in row-major order with a strict comparison keeps the first
// maximum in row-major order, exactly as a scalar loop does.
//
// Why not a separable (row max, then column max) sweep: RoIPool bins tile the
// RoI with at most one shared row / column between neighbours, so a direct
// sweep reads each cell about once already; a separable one reads every cell
// once in its first pass and then its partial results again (columns-first
// also needs a tie-break on the argmax). Not expected to pay on 1-25 cell
// RoIs; not tried.
//
// The loops are compiled for the baseline ISA and, on x86-64 with GCC/Clang,
// also for AVX2 (picked at run time). Only comparisons and selections: both
// versions give identical bits.
#pragma once
#include <cfloat>
#include <cstdint>
#include <vector>

#include "common/macros.h"

namespace pydetops {
namespace cpu {

// Rows [h0, h1) x columns [w0, w1) of a map; empty when h1 <= h0 or w1 <= w0.
struct MaxBin {
  int64_t h0, h1, w0, w1;
};

enum class MaxRule {
  // RoIPool: start from -FLT_MAX and argmax -1; a value replaces the running
  // maximum when strictly greater (a NaN never does).
  kSkipNaN,
  // SPP: start from the bin's first cell; a value replaces the running
  // maximum when strictly greater or NaN, unless the running maximum is
  // already NaN (the first NaN of the bin stays).
  kFirstNaN,
};

template <typename acc_t>
struct MaxVec;
template <>
struct MaxVec<float> {
  typedef float V __attribute__((vector_size(32)));
  typedef int32_t I __attribute__((vector_size(32)));
  using idx_t = int32_t;  // callers use the double version for maps of 2^31 cells or more
};
template <>
struct MaxVec<double> {
  typedef double V __attribute__((vector_size(32)));
  typedef int64_t I __attribute__((vector_size(32)));
  using idx_t = int64_t;
};

// Bins pooled per call into the per-thread result buffers: those buffers hold
// 256 B per bin (float: 4 value and 4 index vectors), so chunking keeps them at
// 256 KB per thread whatever output_size / levels ask for.
constexpr int64_t kMaxBinChunk = 1024;

constexpr int kMaxVecs = 4;  // vectors per pixel of a block: 32 floats or 16 doubles
template <typename acc_t>
constexpr int64_t max_block_channels() {
  return kMaxVecs * static_cast<int64_t>(32 / sizeof(acc_t));
}

// Pools `nbins` bins over `blk` ((H, W, kMaxVecs vectors), row length W).
// Writes per bin kMaxVecs value vectors to m_out and kMaxVecs index vectors
// (h * W + w) to idx_out. An empty bin gives 0 and -1.
template <MaxRule R, typename acc_t>
__attribute__((always_inline)) inline void max_bins_impl(const typename MaxVec<acc_t>::V* __restrict blk, int64_t W,
                                                         const MaxBin* __restrict bins, int64_t nbins,
                                                         typename MaxVec<acc_t>::V* __restrict m_out,
                                                         typename MaxVec<acc_t>::I* __restrict idx_out) {
  using V = typename MaxVec<acc_t>::V;
  using I = typename MaxVec<acc_t>::I;
  using idx_t = typename MaxVec<acc_t>::idx_t;
  for (int64_t b = 0; b < nbins; ++b) {
    const MaxBin r = bins[b];
    V* __restrict mo = m_out + b * kMaxVecs;
    I* __restrict io = idx_out + b * kMaxVecs;
    if (r.h1 <= r.h0 || r.w1 <= r.w0) {
      for (int j = 0; j < kMaxVecs; ++j) {
        mo[j] = V{};
        io[j] = I{} - 1;
      }
      continue;
    }
    V m0, m1, m2, m3;
    I i0, i1, i2, i3;
    if (R == MaxRule::kSkipNaN) {
      m0 = m1 = m2 = m3 = V{} + static_cast<acc_t>(-FLT_MAX);
      i0 = i1 = i2 = i3 = I{} - 1;
    } else {
      const V* p = blk + (r.h0 * W + r.w0) * kMaxVecs;
      m0 = p[0];
      m1 = p[1];
      m2 = p[2];
      m3 = p[3];
      i0 = i1 = i2 = i3 = I{} + static_cast<idx_t>(r.h0 * W + r.w0);
    }
    for (int64_t h = r.h0; h < r.h1; ++h) {
      const V* p = blk + (h * W + r.w0) * kMaxVecs;
      idx_t flat = static_cast<idx_t>(h * W + r.w0);
      for (int64_t w = r.w0; w < r.w1; ++w, p += kMaxVecs, ++flat) {
        const I f = I{} + flat;
#define PYDETOPS_MAX_STEP(m, i, v)                                          \
  {                                                                         \
    const V x = (v);                                                        \
    const I take = R == MaxRule::kSkipNaN ? (x > m) : (~(x <= m) & (m == m)); \
    m = take ? x : m;                                                       \
    i = take ? f : i;                                                       \
  }
        PYDETOPS_MAX_STEP(m0, i0, p[0])
        PYDETOPS_MAX_STEP(m1, i1, p[1])
        PYDETOPS_MAX_STEP(m2, i2, p[2])
        PYDETOPS_MAX_STEP(m3, i3, p[3])
#undef PYDETOPS_MAX_STEP
      }
    }
    mo[0] = m0;
    mo[1] = m1;
    mo[2] = m2;
    mo[3] = m3;
    io[0] = i0;
    io[1] = i1;
    io[2] = i2;
    io[3] = i3;
  }
}

template <MaxRule R, typename acc_t>
using MaxBinsFn = void (*)(const typename MaxVec<acc_t>::V*, int64_t, const MaxBin*, int64_t,
                           typename MaxVec<acc_t>::V*, typename MaxVec<acc_t>::I*);

template <MaxRule R, typename acc_t>
void max_bins_base(const typename MaxVec<acc_t>::V* blk, int64_t W, const MaxBin* bins, int64_t nbins,
                   typename MaxVec<acc_t>::V* m_out, typename MaxVec<acc_t>::I* idx_out) {
  max_bins_impl<R, acc_t>(blk, W, bins, nbins, m_out, idx_out);
}

#if defined(__GNUC__) && defined(__x86_64__)
template <MaxRule R, typename acc_t>
__attribute__((target("avx2"))) void max_bins_avx2(const typename MaxVec<acc_t>::V* blk, int64_t W,
                                                   const MaxBin* bins, int64_t nbins,
                                                   typename MaxVec<acc_t>::V* m_out,
                                                   typename MaxVec<acc_t>::I* idx_out) {
  max_bins_impl<R, acc_t>(blk, W, bins, nbins, m_out, idx_out);
}
#endif

// The fastest version this CPU runs.
template <MaxRule R, typename acc_t>
MaxBinsFn<R, acc_t> pick_max_bins() {
#if defined(__GNUC__) && defined(__x86_64__)
  if (__builtin_cpu_supports("avx2")) return &max_bins_avx2<R, acc_t>;
#endif
  return &max_bins_base<R, acc_t>;
}

// A growable 64-byte-aligned buffer (std::vector does not honour the vector
// types' alignment in template arguments).
template <typename T>
class AlignedBuffer {
 public:
  T* get(int64_t n) {
    const size_t need = static_cast<size_t>(n) * sizeof(T) + 64;
    if (bytes_.size() < need) bytes_.resize(need);
    const uintptr_t p = reinterpret_cast<uintptr_t>(bytes_.data());
    return reinterpret_cast<T*>((p + 63) & ~static_cast<uintptr_t>(63));
  }

 private:
  std::vector<char> bytes_;
};

// Copies channels [c0, c0 + cbn) of one image (base points at its (c0, 0, 0)
// element; strides in elements) into blk as (H, W, block) in acc_t; channels
// past cbn are zero.
template <typename scalar_t, typename acc_t>
void fill_max_block(const scalar_t* base, int64_t sC, int64_t sH, int64_t sW, int64_t H, int64_t W, int64_t cbn,
                    typename MaxVec<acc_t>::V* blk) {
  constexpr int64_t CB = max_block_channels<acc_t>();
  acc_t* dst = reinterpret_cast<acc_t*>(blk);
  if (sC == 1) {
    for (int64_t h = 0; h < H; ++h)
      for (int64_t w = 0; w < W; ++w) {
        const scalar_t* px = base + h * sH + w * sW;
        acc_t* d = dst + (h * W + w) * CB;
        for (int64_t c = 0; c < cbn; ++c) d[c] = static_cast<acc_t>(px[c]);
        for (int64_t c = cbn; c < CB; ++c) d[c] = acc_t(0);
      }
    return;
  }
  if (cbn < CB)
    for (int64_t q = 0; q < H * W; ++q)
      for (int64_t c = cbn; c < CB; ++c) dst[q * CB + c] = acc_t(0);
  for (int64_t c = 0; c < cbn; ++c)
    for (int64_t h = 0; h < H; ++h) {
      const scalar_t* row = base + c * sC + h * sH;
      acc_t* d = dst + h * W * CB + c;
      for (int64_t w = 0; w < W; ++w) d[w * CB] = static_cast<acc_t>(row[w * sW]);
    }
}

}  // namespace cpu
}  // namespace pydetops
