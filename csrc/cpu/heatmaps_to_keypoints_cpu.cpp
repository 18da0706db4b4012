// CPU kernel of heatmaps_to_keypoints.
//
// at::parallel_for over (RoI, keypoint). For one heatmap X (S_h x S_w) and
// its RoI's resampled size h x w, the bicubic resample is separable:
//   T[s][x] = sum_i wx_i(x) X[s][ix_i(x)]        (horizontal, per source row s)
//   V[y][x] = sum_j wy_j(y) T[iy_j(y)][x]        (vertical)
// V is rounded to the heatmaps' dtype (torchvision's resized map has it) and
// scanned in row-major order for its first maximum (NaN counts as the
// largest, as torch.argmax). No resized map is stored: one row of V at a time,
// and the rows of T that are needed, in a per-thread scratch reused across
// tasks (the tap tables are reused across the keypoints of a RoI).
//
// Row pruning (exact): the bicubic weights of an axis sum to 1, the outer
// ones are <= 0 and the inner ones >= 0, so a row of T lies within
// [min - c (max - min), max + c (max - min)] of its source row's extremes
// (c = the largest total negative weight of the axis), and V[y][.] is bounded
// above by the weights of y applied to those row bounds. The row of V through
// the heatmap's largest value is computed first; its maximum is a value V
// reaches. Every row whose bound (plus a margin larger than the rounding of
// the sums) is below that value cannot hold the maximum, nor a tie of it, and
// is skipped; the others are scanned in order. The argmax and score are thus
// those of the full scan. Maps holding NaN or infinity are scanned in full.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "common/checks.h"
#include "common/paste_keypoints_math.h"
#include "cpu/parallel_grain.h"
#include "ops/paste_keypoints.h"

namespace pydetops {
namespace {

template <typename acc_t>
struct Taps {
  std::vector<int64_t> idx;  // 4 per output pixel
  std::vector<acc_t> wt;     // 4 per output pixel
  acc_t max_negative = 0;    // largest -(sum of the negative weights) of one pixel

  void build(int64_t in, int64_t out) {
    idx.resize(static_cast<size_t>(4 * out));
    wt.resize(static_cast<size_t>(4 * out));
    max_negative = 0;
    for (int64_t i = 0; i < out; ++i) {
      pk::cubic_taps<acc_t>(i, in, out, &idx[4 * i], &wt[4 * i]);
      acc_t neg = 0;
      for (int j = 0; j < 4; ++j) neg += wt[4 * i + j] < 0 ? -wt[4 * i + j] : acc_t(0);
      max_negative = std::max(max_negative, neg);
    }
  }
};

template <typename hm_t>
void keypoints_kernel(const at::Tensor& heatmaps, const at::Tensor& rois, at::Tensor& xy, at::Tensor& scores) {
  using acc_t = at::opmath_type<hm_t>;
  const int64_t R = heatmaps.size(0), K = heatmaps.size(1), SH = heatmaps.size(2), SW = heatmaps.size(3);
  const int64_t s0 = heatmaps.stride(0), s1 = heatmaps.stride(1), s2 = heatmaps.stride(2), s3 = heatmaps.stride(3);
  const hm_t* hm = heatmaps.const_data_ptr<hm_t>();

  // Per-RoI geometry (R is small).
  std::vector<pk::RoiMap> maps(static_cast<size_t>(R));
  {
    const at::Tensor rc = rois.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rc.scalar_type(), "heatmaps_to_keypoints_rois", [&] {
      const scalar_t* p = rc.const_data_ptr<scalar_t>();
      for (int64_t r = 0; r < R; ++r) maps[r] = pk::roi_map_of<scalar_t, at::opmath_type<scalar_t>>(p + 4 * r);
    });
  }
  // Rounding margin of the pruning bound: a few ulps of the compute type per
  // multiply-add (8 of them) on values up to |max| (1 + 2c)^2, plus the
  // rounding to the heatmaps' dtype.
  const double eps_acc = std::numeric_limits<acc_t>::epsilon();
  const double eps_out = std::is_same<hm_t, acc_t>::value ? 0.0 : static_cast<double>(
                                                                          std::numeric_limits<hm_t>::epsilon());
  const double rel_margin = 64.0 * eps_acc + 2.0 * eps_out;

  AT_DISPATCH_FLOATING_TYPES(xy.scalar_type(), "heatmaps_to_keypoints_out", [&] {
    using out_t = scalar_t;  // the outputs' type
    out_t* xyp = xy.mutable_data_ptr<out_t>();
    out_t* sp = scores.mutable_data_ptr<out_t>();
    double total_work = 0;
    for (const pk::RoiMap& m : maps) {
      if (m.valid) total_work += static_cast<double>(K) * static_cast<double>(m.w) * static_cast<double>(SH + m.h);
    }
    const int64_t tasks = R * K;
    const int64_t grain = cpu::grain_for_total(tasks, total_work * 2);
    at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
      Taps<acc_t> tx, ty;
      int64_t taps_of = -1;
      std::vector<acc_t> X, row, rmax, rmin;
      // The horizontally resampled rows (S_h x w), left uninitialised: only the rows a
      // task needs are written (and, for a huge RoI, only their pages become resident).
      std::unique_ptr<acc_t[]> T;
      size_t T_cap = 0;
      std::vector<char> done;
      for (int64_t task = begin; task < end; ++task) {
        const int64_t r = task / K, k = task % K;
        const pk::RoiMap& m = maps[r];
        out_t* out_xy = xyp + 3 * task;
        out_xy[2] = out_t(1);
        if (!m.valid) {
          out_xy[0] = out_xy[1] = sp[task] = std::numeric_limits<out_t>::quiet_NaN();
          continue;
        }
        const int64_t h = m.h, w = m.w;
        if (taps_of != r) {
          tx.build(SW, w);
          ty.build(SH, h);
          taps_of = r;
          const size_t need = static_cast<size_t>(SH * w);
          if (need > T_cap) {
            T.reset();
            T.reset(new acc_t[need]);
            T_cap = need;
          }
          row.resize(static_cast<size_t>(w));
        }
        // The heatmap in the compute type, contiguous, with its row extremes.
        X.resize(static_cast<size_t>(SH * SW));
        rmax.resize(static_cast<size_t>(SH));
        rmin.resize(static_cast<size_t>(SH));
        bool finite = true;
        acc_t gmax = -std::numeric_limits<acc_t>::infinity(), max_abs = 0;
        int64_t gmax_row = 0;
        {
          const auto* base = hm + r * s0 + k * s1;
          for (int64_t s = 0; s < SH; ++s) {
            acc_t lo = std::numeric_limits<acc_t>::infinity(), hi = -lo;
            for (int64_t c = 0; c < SW; ++c) {
              const acc_t v = static_cast<acc_t>(base[s * s2 + c * s3]);
              X[s * SW + c] = v;
              lo = std::min(lo, v);
              hi = std::max(hi, v);
              finite &= std::isfinite(v);
            }
            rmax[s] = hi;
            rmin[s] = lo;
            if (hi > gmax) {
              gmax = hi;
              gmax_row = s;
            }
            max_abs = std::max(max_abs, std::max(std::abs(hi), std::abs(lo)));
          }
        }
        done.assign(static_cast<size_t>(SH), 0);
        auto t_row = [&](int64_t s) -> const acc_t* {
          acc_t* t = T.get() + s * w;
          if (!done[s]) {
            const acc_t* xr = X.data() + s * SW;
            const int64_t* id = tx.idx.data();
            const acc_t* wt = tx.wt.data();
            for (int64_t x = 0; x < w; ++x) {
              acc_t v = xr[id[4 * x]] * wt[4 * x];
              v += xr[id[4 * x + 1]] * wt[4 * x + 1];
              v += xr[id[4 * x + 2]] * wt[4 * x + 2];
              v += xr[id[4 * x + 3]] * wt[4 * x + 3];
              t[x] = v;
            }
            done[s] = 1;
          }
          return t;
        };
        // Row y of V, rounded to the heatmaps' dtype, into `row`.
        auto v_row = [&](int64_t y) {
          const int64_t* id = &ty.idx[4 * y];
          const acc_t* wt = &ty.wt[4 * y];
          const acc_t *a = t_row(id[0]), *b = t_row(id[1]), *c = t_row(id[2]), *d = t_row(id[3]);
          const acc_t w0 = wt[0], w1 = wt[1], w2 = wt[2], w3 = wt[3];
          acc_t* o = row.data();
          for (int64_t x = 0; x < w; ++x) {
            acc_t v = a[x] * w0;
            v += b[x] * w1;
            v += c[x] * w2;
            v += d[x] * w3;
            o[x] = static_cast<acc_t>(static_cast<hm_t>(v));
          }
        };
        // Seed: the largest value of the row of V nearest the heatmap's largest value.
        // Bound on |V| (taps' absolute weights sum to at most 1 + 2c per axis).
        const double mag = static_cast<double>(max_abs) * (1.0 + 2.0 * static_cast<double>(tx.max_negative)) *
                           (1.0 + 2.0 * static_cast<double>(ty.max_negative));
        // No pruning where sums could overflow the compute or storage type.
        bool prune = finite && mag < 0.25 * static_cast<double>(std::numeric_limits<hm_t>::max());
        acc_t seed = 0, margin = 0;
        if (prune) {
          const double sy = static_cast<double>(SH) / static_cast<double>(h);
          int64_t y0 = static_cast<int64_t>(std::floor((static_cast<double>(gmax_row) + 0.5) / sy));
          y0 = std::min<int64_t>(std::max<int64_t>(y0, 0), h - 1);
          v_row(y0);
          seed = *std::max_element(row.begin(), row.end());
          margin = static_cast<acc_t>(mag * rel_margin + 4.0 * std::numeric_limits<acc_t>::denorm_min());
        }
        const acc_t cx = tx.max_negative;
        acc_t best = 0;
        int64_t best_idx = -1;
        bool best_nan = false;
        for (int64_t y = 0; y < h && !best_nan; ++y) {
          if (prune) {
            const int64_t* id = &ty.idx[4 * y];
            const acc_t* wt = &ty.wt[4 * y];
            acc_t bound = 0;
            for (int j = 0; j < 4; ++j) {
              const int64_t s = id[j];
              const acc_t spread = rmax[s] - rmin[s];
              bound += wt[j] >= 0 ? wt[j] * (rmax[s] + cx * spread) : wt[j] * (rmin[s] - cx * spread);
            }
            if (bound + margin < seed) continue;
          }
          v_row(y);
          const acc_t* o = row.data();
          // The row's maximum (8 independent lanes, so that it vectorises; `a > m ? a : m`
          // never picks a NaN) and whether it holds a NaN.
          acc_t lane[8];
          bool nan_in_row = false;
          for (int j = 0; j < 8; ++j) lane[j] = -std::numeric_limits<acc_t>::infinity();
          int64_t x = 0;
          for (; x + 8 <= w; x += 8) {
            for (int j = 0; j < 8; ++j) {
              const acc_t v = o[x + j];
              lane[j] = v > lane[j] ? v : lane[j];
              nan_in_row |= v != v;
            }
          }
          for (; x < w; ++x) {
            lane[0] = o[x] > lane[0] ? o[x] : lane[0];
            nan_in_row |= o[x] != o[x];
          }
          acc_t row_max = lane[0];
          for (int j = 1; j < 8; ++j) row_max = lane[j] > row_max ? lane[j] : row_max;
          if (nan_in_row) {  // the first NaN wins (torch.argmax); earlier rows held none
            for (x = 0; x < w; ++x) {
              if (std::isnan(o[x])) {
                best = o[x];
                best_idx = y * w + x;
                best_nan = true;
                break;
              }
            }
          } else if (best_idx < 0 || row_max > best) {  // ties with an earlier row keep the earlier
            x = 0;
            while (!(o[x] == row_max)) ++x;  // all-(-inf) rows: x = 0
            best = row_max;
            best_idx = y * w + x;
          }
        }
        const int64_t xi = best_idx % w, yi = best_idx / w;
        out_xy[0] = (static_cast<out_t>(xi) + out_t(0.5)) * static_cast<out_t>(m.corr_x) + static_cast<out_t>(m.off_x);
        out_xy[1] = (static_cast<out_t>(yi) + out_t(0.5)) * static_cast<out_t>(m.corr_y) + static_cast<out_t>(m.off_y);
        sp[task] = static_cast<out_t>(best);
      }
    });
  });
}

std::tuple<at::Tensor, at::Tensor> heatmaps_to_keypoints_cpu(const at::Tensor& heatmaps, const at::Tensor& rois) {
  check_heatmaps_to_keypoints_args(heatmaps, rois);
  const int64_t R = heatmaps.size(0), K = heatmaps.size(1);
  const auto dt = keypoints_result_dtype(heatmaps, rois);
  at::Tensor xy = at::empty({R, K, 3}, heatmaps.options().dtype(dt));
  at::Tensor scores = at::empty({R, K}, heatmaps.options().dtype(dt));
  if (R * K == 0) return {xy, scores};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, heatmaps.scalar_type(), "heatmaps_to_keypoints_cpu",
                                  [&] { keypoints_kernel<scalar_t>(heatmaps, rois, xy, scores); });
  return {xy, scores};
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CPU, m) {
  m.impl("heatmaps_to_keypoints", &pydetops::heatmaps_to_keypoints_cpu);
}
