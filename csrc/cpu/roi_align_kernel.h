// CPU RoIAlign over one or several feature maps (the kernel behind roi_align
// and multi_level_roi_align, forward and backward).
//
// Work is cut into tasks (level l, image n, block of kChannelBlock channels);
// a task handles the RoIs of (l, n) in increasing RoI order, so each output
// element (forward) and each grad_input element (backward) is computed by one
// thread in a fixed order: bit-identical results for any thread count, no
// atomics. Tasks are ordered channel-block-major so that the static split of
// at::parallel_for gives every thread the same share of each level.
//
// Per RoI, the sample rows and columns (bilinear_axis) are computed once and
// shared by all channels of the block; the innermost loop runs over the
// channels of the block, which are contiguous in memory:
//  - channels-last input (stride(1) == 1 in every map) is read in place, with
//    tasks over RoIs instead (each RoI over all its channels, see the kernel);
//  - other layouts are either transposed block by block into a per-thread
//    (H, W, block) scratch in the accumulate type (when the RoIs of the image
//    take more taps than the map has pixels), or read plane by plane in place.
// The backward accumulates into a per-thread (H, W, block) scratch in the
// accumulate type and writes it once into the contiguous grad_input.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "common/checks.h"
#include "common/roi_math.h"
#include "cpu/parallel_grain.h"

namespace pydetops {
namespace cpu {

constexpr int64_t kChannelBlock = 16;

// The valid samples of one RoI along one axis, grouped by bin: bin p owns
// entries [begin[p], begin[p + 1]); lo/hi are element offsets (index * stride).
template <typename T>
struct AxisTaps {
  std::vector<int64_t> begin, lo, hi;
  std::vector<T> wlo, whi;

  void build(T start, T bin, int64_t pooled, int64_t grid, int64_t size, int64_t stride) {
    begin.resize(pooled + 1);
    lo.clear();
    hi.clear();
    wlo.clear();
    whi.clear();
    for (int64_t p = 0; p < pooled; ++p) {
      begin[p] = static_cast<int64_t>(lo.size());
      if (grid <= 0 || size <= 0) continue;
      const T bin_start = start + static_cast<T>(p) * bin;
      int64_t i0, i1;
      roi_align_sample_range(bin_start, bin, grid, size, &i0, &i1);
      for (int64_t i = i0; i < i1; ++i) {
        const BilinearAxis<T> a = bilinear_axis(roi_align_sample(bin_start, bin, i, grid), size);
        if (!a.valid) continue;
        lo.push_back(a.low * stride);
        hi.push_back(a.high * stride);
        wlo.push_back(a.w_low);
        whi.push_back(a.w_high);
      }
    }
    begin[pooled] = static_cast<int64_t>(lo.size());
  }
};

struct AlignParams {
  int64_t pooled_h, pooled_w, sampling_ratio;
  bool aligned;
};

// RoIs grouped by (level, image): group g = level * N + image holds
// order[begin[g], begin[g + 1]) in increasing RoI order. RoIs whose level is
// outside [0, L) are in no group (they pool to zeros).
struct RoIGroups {
  std::vector<int64_t> begin, order;
};

template <typename acc_t>
RoIGroups group_rois(const acc_t* rois, int64_t K, const int64_t* levels, int64_t L, int64_t N) {
  RoIGroups g;
  g.begin.assign(L * N + 1, 0);
  std::vector<int64_t> group_of(K, -1);
  for (int64_t k = 0; k < K; ++k) {
    const int64_t l = levels ? levels[k] : 0;
    if (l < 0 || l >= L) continue;
    const int64_t n = static_cast<int64_t>(rois[5 * k]);  // checked: an integer in [0, N)
    group_of[k] = l * N + n;
    ++g.begin[group_of[k] + 1];
  }
  for (int64_t i = 0; i < L * N; ++i) g.begin[i + 1] += g.begin[i];
  g.order.resize(g.begin[L * N]);
  std::vector<int64_t> fill(g.begin.begin(), g.begin.end() - 1);
  for (int64_t k = 0; k < K; ++k)
    if (group_of[k] >= 0) g.order[fill[group_of[k]]++] = k;
  return g;
}

template <typename acc_t>
inline RoIAlignBox<acc_t> box_of(const acc_t* roi, double scale, const AlignParams& p) {
  return roi_align_box<acc_t>(roi[1], roi[2], roi[3], roi[4], scale, p.pooled_h, p.pooled_w, p.sampling_ratio,
                              p.aligned);
}

// Forward of one RoI over a block of channels stored (H, W, channel) with unit
// channel stride. CB > 0: compile-time block width; CB == 0: `cbn` channels.
template <int CB, typename src_t, typename acc_t, typename out_t>
void align_roi_interleaved(const src_t* __restrict src, int64_t cbn, const AxisTaps<acc_t>& ys,
                           const AxisTaps<acc_t>& xs, const AlignParams& p, acc_t count, out_t* out,
                           int64_t out_cstride) {
  const int64_t n = CB > 0 ? CB : cbn;
  alignas(64) acc_t acc[kChannelBlock];
  for (int64_t ph = 0; ph < p.pooled_h; ++ph) {
    for (int64_t pw = 0; pw < p.pooled_w; ++pw) {
      for (int64_t c = 0; c < n; ++c) acc[c] = acc_t(0);
      for (int64_t iy = ys.begin[ph]; iy < ys.begin[ph + 1]; ++iy) {
        const acc_t wyl = ys.wlo[iy], wyh = ys.whi[iy];
        const src_t* rl = src + ys.lo[iy];
        const src_t* rh = src + ys.hi[iy];
        for (int64_t ix = xs.begin[pw]; ix < xs.begin[pw + 1]; ++ix) {
          const acc_t wxl = xs.wlo[ix], wxh = xs.whi[ix];
          const acc_t w_ll = wyl * wxl, w_lh = wyl * wxh, w_hl = wyh * wxl, w_hh = wyh * wxh;
          const src_t* __restrict p_ll = rl + xs.lo[ix];
          const src_t* __restrict p_lh = rl + xs.hi[ix];
          const src_t* __restrict p_hl = rh + xs.lo[ix];
          const src_t* __restrict p_hh = rh + xs.hi[ix];
          for (int64_t c = 0; c < n; ++c)
            acc[c] += w_ll * static_cast<acc_t>(p_ll[c]) + w_lh * static_cast<acc_t>(p_lh[c]) +
                      w_hl * static_cast<acc_t>(p_hl[c]) + w_hh * static_cast<acc_t>(p_hh[c]);
        }
      }
      out_t* o = out + ph * p.pooled_w + pw;
      for (int64_t c = 0; c < n; ++c) o[c * out_cstride] = static_cast<out_t>(acc[c] / count);
    }
  }
}

// Forward of one RoI channel plane by channel plane (any strides; ys/xs built
// with the plane's row and column strides).
template <typename src_t, typename acc_t, typename out_t>
void align_roi_planar(const src_t* plane0, int64_t plane_stride, int64_t cbn, const AxisTaps<acc_t>& ys,
                      const AxisTaps<acc_t>& xs, const AlignParams& p, acc_t count, out_t* out, int64_t out_cstride) {
  for (int64_t c = 0; c < cbn; ++c) {
    const src_t* plane = plane0 + c * plane_stride;
    for (int64_t ph = 0; ph < p.pooled_h; ++ph) {
      for (int64_t pw = 0; pw < p.pooled_w; ++pw) {
        acc_t s = acc_t(0);
        for (int64_t iy = ys.begin[ph]; iy < ys.begin[ph + 1]; ++iy) {
          const acc_t wyl = ys.wlo[iy], wyh = ys.whi[iy];
          const src_t* rl = plane + ys.lo[iy];
          const src_t* rh = plane + ys.hi[iy];
          for (int64_t ix = xs.begin[pw]; ix < xs.begin[pw + 1]; ++ix) {
            const acc_t wxl = xs.wlo[ix], wxh = xs.whi[ix];
            s += (wyl * wxl) * static_cast<acc_t>(rl[xs.lo[ix]]) + (wyl * wxh) * static_cast<acc_t>(rl[xs.hi[ix]]) +
                 (wyh * wxl) * static_cast<acc_t>(rh[xs.lo[ix]]) + (wyh * wxh) * static_cast<acc_t>(rh[xs.hi[ix]]);
          }
        }
        out[c * out_cstride + ph * p.pooled_w + pw] = static_cast<out_t>(s / count);
      }
    }
  }
}

struct Scratch {
  std::vector<char> bytes;
  template <typename T>
  T* get(int64_t n) {
    if (bytes.size() < static_cast<size_t>(n) * sizeof(T)) bytes.resize(static_cast<size_t>(n) * sizeof(T));
    return reinterpret_cast<T*>(bytes.data());
  }
};

// Forward over L feature maps of the same N, C and dtype. rois: [K, 5] in
// acc_t, contiguous. out: zero-filled [K, C, pooled_h, pooled_w], contiguous.
template <typename scalar_t, typename acc_t>
void roi_align_forward_kernel(const std::vector<at::Tensor>& feats, const std::vector<double>& scales,
                              const acc_t* rois, int64_t K, const int64_t* levels, const AlignParams& p,
                              scalar_t* out) {
  const int64_t L = static_cast<int64_t>(feats.size());
  const int64_t N = feats[0].size(0), C = feats[0].size(1);
  const int64_t ohw_ = p.pooled_h * p.pooled_w;

  // Every map channels-last: RoI-parallel, each RoI over all its channels (a tap's
  // channels are contiguous). A task per (map, channel block) would read each block's
  // 16 channels of consecutive pixels C elements apart (1 KiB for 256 float channels):
  // a stride that defeats the prefetcher and the TLB and maps them onto a few L1
  // sets (20-25 % slower than NCHW on R50-FPN maps). Same taps, same per-channel
  // arithmetic and order as the block path: the same bits.
  bool all_channels_last = C > 1;
  for (const at::Tensor& f : feats) all_channels_last = all_channels_last && f.stride(1) == 1;
  if (all_channels_last) {
    double total_taps = 0;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t l = levels ? levels[k] : 0;
      if (l < 0 || l >= L) continue;
      const RoIAlignBox<acc_t> b = box_of(rois + 5 * k, scales[l], p);
      total_taps += static_cast<double>(ohw_) * std::max<double>(1.0, std::min<double>(b.grid_h, feats[l].size(2) + 2)) *
                    std::max<double>(1.0, std::min<double>(b.grid_w, feats[l].size(3) + 2));
    }
    const int64_t grain = grain_for_total(K, total_taps * 4.0 * static_cast<double>(C));
    at::parallel_for(0, K, grain, [&](int64_t k_begin, int64_t k_end) {
      AxisTaps<acc_t> ys, xs;
      for (int64_t k = k_begin; k < k_end; ++k) {
        const int64_t l = levels ? levels[k] : 0;
        if (l < 0 || l >= L) continue;  // pools to zeros
        const RoIAlignBox<acc_t> b = box_of(rois + 5 * k, scales[l], p);
        if (!b.valid) continue;
        const at::Tensor& f = feats[l];
        const int64_t n = static_cast<int64_t>(rois[5 * k]);
        const int64_t H = f.size(2), W = f.size(3);
        const scalar_t* base = f.data_ptr<scalar_t>() + n * f.stride(0);
        ys.build(b.start_h, b.bin_h, p.pooled_h, b.grid_h, H, f.stride(2));
        xs.build(b.start_w, b.bin_w, p.pooled_w, b.grid_w, W, f.stride(3));
        for (int64_t c0 = 0; c0 < C; c0 += kChannelBlock) {
          const int64_t cbn = std::min(kChannelBlock, C - c0);
          scalar_t* o = out + (k * C + c0) * ohw_;
          if (cbn == kChannelBlock)
            align_roi_interleaved<kChannelBlock>(base + c0, cbn, ys, xs, p, b.count, o, ohw_);
          else
            align_roi_interleaved<0>(base + c0, cbn, ys, xs, p, b.count, o, ohw_);
        }
      }
    });
    return;
  }

  const RoIGroups groups = group_rois(rois, K, levels, L, N);
  const int64_t G = L * N, nb = (C + kChannelBlock - 1) / kChannelBlock;
  const int64_t ohw = p.pooled_h * p.pooled_w;

  // Per group: read in place or transpose the block into a scratch first?
  std::vector<char> transpose(G, 0);
  double total_taps = 0;  // samples of all bins (and transposed map cells), per channel
  for (int64_t g = 0; g < G; ++g) {
    const at::Tensor& f = feats[g / N];
    const int64_t H = f.size(2), W = f.size(3);
    double taps = 0;
    for (int64_t i = groups.begin[g]; i < groups.begin[g + 1]; ++i) {
      const RoIAlignBox<acc_t> b = box_of(rois + 5 * groups.order[i], scales[g / N], p);
      taps += static_cast<double>(ohw) * std::max<double>(1.0, std::min<double>(b.grid_h, H + 2)) *
              std::max<double>(1.0, std::min<double>(b.grid_w, W + 2));
    }
    transpose[g] = 2.0 * taps >= static_cast<double>(H * W);
    total_taps += taps + (transpose[g] ? static_cast<double>(H * W) : 0.0);
  }
  // 4 bilinear reads per tap and channel.
  const int64_t grain = grain_for_total(G * nb, total_taps * 4.0 * static_cast<double>(C));

  at::parallel_for(0, G * nb, grain, [&](int64_t t_begin, int64_t t_end) {
    AxisTaps<acc_t> ys, xs;
    Scratch scratch;
    for (int64_t t = t_begin; t < t_end; ++t) {
      const int64_t g = t % G, blk = t / G;
      if (groups.begin[g] == groups.begin[g + 1]) continue;
      const int64_t l = g / N, n = g % N;
      const at::Tensor& f = feats[l];
      const int64_t H = f.size(2), W = f.size(3);
      const int64_t sN = f.stride(0), sC = f.stride(1), sH = f.stride(2), sW = f.stride(3);
      const int64_t c0 = blk * kChannelBlock, cbn = std::min(kChannelBlock, C - c0);
      const scalar_t* base = f.data_ptr<scalar_t>() + n * sN + c0 * sC;
      const bool in_place_interleaved = sC == 1 && C > 1;
      const bool use_scratch = !in_place_interleaved && transpose[g];
      const acc_t* tbuf = nullptr;
      if (use_scratch) {
        acc_t* buf = scratch.get<acc_t>(H * W * cbn);
        for (int64_t h = 0; h < H; ++h)
          for (int64_t c = 0; c < cbn; ++c) {
            const scalar_t* row = base + c * sC + h * sH;
            acc_t* dst = buf + h * W * cbn + c;
            for (int64_t w = 0; w < W; ++w) dst[w * cbn] = static_cast<acc_t>(row[w * sW]);
          }
        tbuf = buf;
      }
      for (int64_t i = groups.begin[g]; i < groups.begin[g + 1]; ++i) {
        const int64_t k = groups.order[i];
        const RoIAlignBox<acc_t> b = box_of(rois + 5 * k, scales[l], p);
        if (!b.valid) continue;
        scalar_t* o = out + (k * C + c0) * ohw;
        if (in_place_interleaved || use_scratch) {
          const int64_t rs = use_scratch ? W * cbn : sH, cs = use_scratch ? cbn : sW;
          ys.build(b.start_h, b.bin_h, p.pooled_h, b.grid_h, H, rs);
          xs.build(b.start_w, b.bin_w, p.pooled_w, b.grid_w, W, cs);
          if (use_scratch) {
            if (cbn == kChannelBlock)
              align_roi_interleaved<kChannelBlock>(tbuf, cbn, ys, xs, p, b.count, o, ohw);
            else
              align_roi_interleaved<0>(tbuf, cbn, ys, xs, p, b.count, o, ohw);
          } else {
            if (cbn == kChannelBlock)
              align_roi_interleaved<kChannelBlock>(base, cbn, ys, xs, p, b.count, o, ohw);
            else
              align_roi_interleaved<0>(base, cbn, ys, xs, p, b.count, o, ohw);
          }
        } else {
          ys.build(b.start_h, b.bin_h, p.pooled_h, b.grid_h, H, sH);
          xs.build(b.start_w, b.bin_w, p.pooled_w, b.grid_w, W, sW);
          align_roi_planar(base, sC, cbn, ys, xs, p, b.count, o, ohw);
        }
      }
    }
  });
}

// Backward: grads[l] = empty contiguous [N, C, H_l, W_l] of scalar_t, fully
// written here. grad: [K, C, pooled_h, pooled_w] in acc_t, contiguous.
template <typename scalar_t, typename acc_t>
void roi_align_backward_kernel(const acc_t* grad, const acc_t* rois, int64_t K, const int64_t* levels,
                               const std::vector<double>& scales, const AlignParams& p, int64_t N, int64_t C,
                               std::vector<at::Tensor>& grads) {
  const int64_t L = static_cast<int64_t>(grads.size());
  const RoIGroups groups = group_rois(rois, K, levels, L, N);
  const int64_t G = L * N, nb = (C + kChannelBlock - 1) / kChannelBlock;
  const int64_t ohw = p.pooled_h * p.pooled_w;
  // Work: at least one sample per output bin and channel, 4 bilinear taps each;
  // a fixed sampling_ratio gives its square. (Adaptive grids of large boxes
  // are larger still: then the region is large enough to split anyway.)
  const double samples = p.sampling_ratio > 0 ? static_cast<double>(p.sampling_ratio * p.sampling_ratio) : 4.0;
  const int64_t grain =
      grain_for_total(G * nb, static_cast<double>(K) * static_cast<double>(ohw) * static_cast<double>(C) * samples * 4.0);
  at::parallel_for(0, G * nb, grain, [&](int64_t t_begin, int64_t t_end) {
    AxisTaps<acc_t> ys, xs;
    Scratch scratch;
    alignas(64) acc_t gv[kChannelBlock];
    for (int64_t t = t_begin; t < t_end; ++t) {
      const int64_t g = t % G, blk = t / G;
      const int64_t l = g / N, n = g % N;
      at::Tensor& gi = grads[l];
      const int64_t H = gi.size(2), W = gi.size(3), HW = H * W;
      const int64_t c0 = blk * kChannelBlock, cbn = std::min(kChannelBlock, C - c0);
      scalar_t* dst = gi.data_ptr<scalar_t>() + (n * C + c0) * HW;
      if (groups.begin[g] == groups.begin[g + 1]) {
        std::fill(dst, dst + cbn * HW, scalar_t(0));
        continue;
      }
      acc_t* buf = scratch.get<acc_t>(HW * cbn);
      std::fill(buf, buf + HW * cbn, acc_t(0));
      for (int64_t i = groups.begin[g]; i < groups.begin[g + 1]; ++i) {
        const int64_t k = groups.order[i];
        const RoIAlignBox<acc_t> b = box_of(rois + 5 * k, scales[l], p);
        if (!b.valid) continue;
        ys.build(b.start_h, b.bin_h, p.pooled_h, b.grid_h, H, W * cbn);
        xs.build(b.start_w, b.bin_w, p.pooled_w, b.grid_w, W, cbn);
        const acc_t* gk = grad + (k * C + c0) * ohw;
        for (int64_t ph = 0; ph < p.pooled_h; ++ph) {
          for (int64_t pw = 0; pw < p.pooled_w; ++pw) {
            const int64_t y0 = ys.begin[ph], y1 = ys.begin[ph + 1], x0 = xs.begin[pw], x1 = xs.begin[pw + 1];
            if (y0 == y1 || x0 == x1) continue;
            for (int64_t c = 0; c < cbn; ++c) gv[c] = gk[c * ohw + ph * p.pooled_w + pw] / b.count;
            for (int64_t iy = y0; iy < y1; ++iy) {
              const acc_t wyl = ys.wlo[iy], wyh = ys.whi[iy];
              acc_t* rl = buf + ys.lo[iy];
              acc_t* rh = buf + ys.hi[iy];
              for (int64_t ix = x0; ix < x1; ++ix) {
                const acc_t wxl = xs.wlo[ix], wxh = xs.whi[ix];
                const acc_t w_ll = wyl * wxl, w_lh = wyl * wxh, w_hl = wyh * wxl, w_hh = wyh * wxh;
                // Four separate loops: the four corners may coincide at the border.
                acc_t* q = rl + xs.lo[ix];
                for (int64_t c = 0; c < cbn; ++c) q[c] += w_ll * gv[c];
                q = rl + xs.hi[ix];
                for (int64_t c = 0; c < cbn; ++c) q[c] += w_lh * gv[c];
                q = rh + xs.lo[ix];
                for (int64_t c = 0; c < cbn; ++c) q[c] += w_hl * gv[c];
                q = rh + xs.hi[ix];
                for (int64_t c = 0; c < cbn; ++c) q[c] += w_hh * gv[c];
              }
            }
          }
        }
      }
      for (int64_t h = 0; h < H; ++h)
        for (int64_t c = 0; c < cbn; ++c) {
          const acc_t* src = buf + h * W * cbn + c;
          scalar_t* row = dst + c * HW + h * W;
          for (int64_t w = 0; w < W; ++w) row[w] = static_cast<scalar_t>(src[w * cbn]);
        }
    }
  });
}

}  // namespace cpu
}  // namespace pydetops
