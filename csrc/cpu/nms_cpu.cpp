// CPU kernels of nms, batched_nms and soft_nms.
//
// Greedy NMS with spatial culling. The boxes are sorted once by score (the
// processing order). For culling (CullingIndex) they are cut by y1 into strips
// of equal count (about two mean box heights tall) and sorted by x1 within each
// strip; coordinates and areas are laid out in that order (structure of
// arrays). When a box is kept, only the boxes that can intersect it are
// tested: in each strip whose y extent meets the box's, those from the first
// position whose running maximum of x2 exceeds the kept box's x1 up to the
// first whose x1 reaches the kept box's x2 (two binary searches). Each such
// range is tested with a branch-free loop the compiler vectorises (AVX2 where
// the CPU has it), OR-ing "IoU > threshold" into a suppressed flag per box.
// Boxes outside the ranges have an empty intersection, so IoU 0 (or NaN),
// which never suppresses: the result is exactly that of the plain O(N^2)
// greedy loop.
//
// A box kept later never un-suppresses anything, and a box already kept is
// never consulted again, so flags may be set on any box of a range without
// checking its rank.
//
// Boxes with a non-finite coordinate have IoU 0 or NaN with every box: they
// are kept (in score order) and take no part in the culling.
//
// batched_nms sorts once by (class, score) and runs the above per class
// segment, in parallel over classes; the kept boxes are then sorted by score.
// Nothing ever compares boxes of two classes, and coordinates are used as they
// are (no per-class offset), so any coordinate range keeps its precision.
//
// soft_nms uses the same culling index to decay only the boxes that overlap
// the box just selected (IoUs of a range computed by a vectorised loop first),
// and a max-heap with lazy decrease-key to find the next box.
//
// Score order everywhere: decreasing score, NaN last, ties by lower index
// (-0.0 and +0.0 tie). Results do not depend on the number of threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/parallel_grain.h"
#include "common/checks.h"
#include "common/nms_math.h"
#include "ops/nms.h"

namespace pydetops {
namespace {

// ---------------------------------------------------------------- score order

// A key whose increasing order is the score order: decreasing value, NaN last.
inline uint64_t descending_score_key(double s) {
  if (std::isnan(s)) return ~uint64_t(0);
  s += 0.0;  // -0.0 -> +0.0, so that the two tie
  uint64_t bits;
  std::memcpy(&bits, &s, sizeof(bits));
  const uint64_t ascending = (bits >> 63) ? ~bits : (bits | (uint64_t(1) << 63));
  return ~ascending;
}

struct ScoreKey {
  uint64_t key;
  int64_t idx;
  bool operator<(const ScoreKey& o) const { return key != o.key ? key < o.key : idx < o.idx; }
};

std::vector<double> scores_as_double(const at::Tensor& scores) {
  const at::Tensor s = scores.to(at::kDouble).contiguous();
  const double* p = s.data_ptr<double>();
  return std::vector<double>(p, p + s.numel());
}

// ------------------------------------------------------------ greedy NMS core

// The range loops are compiled twice on x86-64 Linux with GCC, for AVX2 and
// for the baseline ISA, and the loader picks the one the CPU supports.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define PYDETOPS_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define PYDETOPS_SIMD_CLONES
#endif

// suppressed[j] |= IoU(box, j) > thr for j in [lo, hi).
template <typename T>
PYDETOPS_SIMD_CLONES void suppress_range(const T* __restrict x1, const T* __restrict y1, const T* __restrict x2,
                                         const T* __restrict y2, const T* __restrict area,
                                         int32_t* __restrict suppressed, int64_t lo, int64_t hi, T bx1, T by1, T bx2,
                                         T by2, T barea, T thr) {
  for (int64_t j = lo; j < hi; ++j) {
    const T iou = iou_with_areas(bx1, by1, bx2, by2, barea, x1[j], y1[j], x2[j], y2[j], area[j]);
    suppressed[j] |= static_cast<int32_t>(iou > thr);
  }
}

// out[j - lo] = IoU(box, j) for j in [lo, hi).
template <typename T>
PYDETOPS_SIMD_CLONES void iou_range(const T* __restrict x1, const T* __restrict y1, const T* __restrict x2,
                                    const T* __restrict y2, const T* __restrict area, T* __restrict out, int64_t lo,
                                    int64_t hi, T bx1, T by1, T bx2, T by2, T barea) {
  for (int64_t j = lo; j < hi; ++j)
    out[j - lo] = iou_with_areas(bx1, by1, bx2, by2, barea, x1[j], y1[j], x2[j], y2[j], area[j]);
}

// The finite boxes of one NMS problem, arranged for culling: cut by y1 into
// strips of equal count, and sorted by x1 within each strip (structure of
// arrays). The boxes that may intersect a box lie, in each strip whose y
// extent meets the box's, between the first position whose running maximum
// of x2 exceeds the box's x1 and the first whose x1 reaches the box's x2.
template <typename T>
struct CullingIndex {
  std::vector<T> x1, y1, x2, y2, area;
  std::vector<T> x2_running_max;  // within the strip: max of x2 over its positions up to p
  std::vector<int64_t> strip_begin;
  std::vector<T> strip_y1_min, strip_y2_max;
  std::vector<int32_t> position;  // per input box (rank): its position, or -1 (non-finite box)
  std::vector<int32_t> input;     // per position: the input box (rank)

  // boxes: Tensor[*, 4] rows; order[r]: the row of the r-th box of this problem.
  void build(const T* boxes, const int64_t* order, int64_t n) {
    std::vector<std::pair<T, int32_t>> keyed;
    keyed.reserve(n);
    position.assign(n, -1);
    double height_sum = 0;
    T y_lo = std::numeric_limits<T>::infinity(), y_hi = -std::numeric_limits<T>::infinity();
    for (int64_t r = 0; r < n; ++r) {
      const T* b = boxes + 4 * order[r];
      if (!(std::isfinite(b[0]) && std::isfinite(b[1]) && std::isfinite(b[2]) && std::isfinite(b[3]))) continue;
      keyed.emplace_back(b[1], static_cast<int32_t>(r));
      if (b[3] > b[1]) height_sum += static_cast<double>(b[3]) - static_cast<double>(b[1]);
      y_lo = min_of(y_lo, b[1]);
      y_hi = max_of(y_hi, b[3]);
    }
    const int64_t m = static_cast<int64_t>(keyed.size());
    // About two mean box heights per strip, at least 128 boxes per strip, at most 64 strips.
    int64_t strips = 1;
    const double extent = static_cast<double>(y_hi) - static_cast<double>(y_lo);
    if (m >= 256 && height_sum > 0 && std::isfinite(extent) && std::isfinite(height_sum)) {
      const double target = extent / (2.0 * height_sum / static_cast<double>(m));
      strips = std::max<int64_t>(1, std::min<int64_t>({64, m / 128, static_cast<int64_t>(target)}));
    }
    if (strips > 1) std::sort(keyed.begin(), keyed.end());
    strip_begin.resize(strips + 1);
    for (int64_t k = 0; k <= strips; ++k) strip_begin[k] = m * k / strips;
    for (int64_t p = 0; p < m; ++p) keyed[p].first = boxes[4 * order[keyed[p].second]];  // now keyed by x1
    for (int64_t k = 0; k < strips; ++k)
      std::sort(keyed.begin() + strip_begin[k], keyed.begin() + strip_begin[k + 1]);

    x1.resize(m); y1.resize(m); x2.resize(m); y2.resize(m); area.resize(m); x2_running_max.resize(m);
    input.resize(m);
    strip_y1_min.assign(strips, std::numeric_limits<T>::infinity());
    strip_y2_max.assign(strips, -std::numeric_limits<T>::infinity());
    for (int64_t k = 0; k < strips; ++k) {
      for (int64_t p = strip_begin[k]; p < strip_begin[k + 1]; ++p) {
        const int32_t r = keyed[p].second;
        const T* b = boxes + 4 * order[r];
        x1[p] = b[0]; y1[p] = b[1]; x2[p] = b[2]; y2[p] = b[3];
        area[p] = box_area_xyxy(b[0], b[1], b[2], b[3]);
        x2_running_max[p] = p == strip_begin[k] ? b[2] : max_of(x2_running_max[p - 1], b[2]);
        strip_y1_min[k] = min_of(strip_y1_min[k], b[1]);
        strip_y2_max[k] = max_of(strip_y2_max[k], b[3]);
        position[r] = static_cast<int32_t>(p);
        input[p] = r;
      }
    }
  }

  // Calls f(lo, hi) for the position ranges that hold every box that may
  // intersect the box at position p (and a few that do not).
  template <typename F>
  void for_each_candidate_range(int64_t p, F&& f) const {
    const T bx1 = x1[p], by1 = y1[p], bx2 = x2[p], by2 = y2[p];
    const int64_t strips = static_cast<int64_t>(strip_y1_min.size());
    for (int64_t k = 0; k < strips; ++k) {
      if (!(strip_y1_min[k] < by2 && strip_y2_max[k] > by1)) continue;
      const auto first = x2_running_max.begin() + strip_begin[k], last = x2_running_max.begin() + strip_begin[k + 1];
      const int64_t lo = std::upper_bound(first, last, bx1) - x2_running_max.begin();
      const int64_t hi = std::lower_bound(x1.begin() + strip_begin[k], x1.begin() + strip_begin[k + 1], bx2) -
                         x1.begin();
      if (hi > lo) f(lo, hi);
    }
  }
};

// Greedy NMS of the n boxes boxes[order[0]], boxes[order[1]], ... given in
// score order; keep[r] = 1 when the r-th is kept (keep must hold n zeros).
template <typename T>
void greedy_nms(const T* boxes, const int64_t* order, int64_t n, T thr, uint8_t* keep) {
  if (n == 0) return;
  CullingIndex<T> ix;
  ix.build(boxes, order, n);
  std::vector<int32_t> suppressed(ix.x1.size(), 0);
  const T* x1 = ix.x1.data(); const T* y1 = ix.y1.data();
  const T* x2 = ix.x2.data(); const T* y2 = ix.y2.data();
  const T* area = ix.area.data();
  int32_t* sup = suppressed.data();
  for (int64_t r = 0; r < n; ++r) {
    const int32_t p = ix.position[r];
    if (p < 0) {  // non-finite: overlaps nothing
      keep[r] = 1;
      continue;
    }
    if (sup[p]) continue;
    keep[r] = 1;
    const T bx1 = x1[p], by1 = y1[p], bx2 = x2[p], by2 = y2[p], ba = area[p];
    ix.for_each_candidate_range(p, [&](int64_t lo, int64_t hi) {
      // A parallel region per kept box pays only when the range is long enough
      // to hide a join that waits for a descheduled partner thread (one
      // scheduler slice, a few ms, when another process holds a core): at
      // about 1 ns a box that is some 8M boxes. Below it one thread is faster
      // alone and does not depend on the load (benchmarks/NOTES.md, "Hardening").
      constexpr int64_t kParallelRange = 1 << 23;
      if (hi - lo >= kParallelRange && !at::in_parallel_region()) {
        // Disjoint flag writes: the same result for any number of threads.
        at::parallel_for(lo, hi, kParallelRange / 2, [&](int64_t b, int64_t e) {
          suppress_range(x1, y1, x2, y2, area, sup, b, e, bx1, by1, bx2, by2, ba, thr);
        });
      } else {
        suppress_range(x1, y1, x2, y2, area, sup, lo, hi, bx1, by1, bx2, by2, ba, thr);
      }
    });
  }
}

at::Tensor boxes_in_acc_type(const at::Tensor& boxes) {
  return boxes.to(accumulate_type_of(boxes.scalar_type())).contiguous();
}

at::Tensor to_index_tensor(const std::vector<int64_t>& v, const at::Tensor& like) {
  at::Tensor out = at::empty({static_cast<int64_t>(v.size())}, like.options().dtype(at::kLong));
  if (!v.empty()) std::memcpy(out.data_ptr<int64_t>(), v.data(), v.size() * sizeof(int64_t));
  return out;
}

// ------------------------------------------------------------------------ nms

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_args(boxes, scores, iou_threshold);
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  const std::vector<double> s = scores_as_double(scores);
  std::vector<ScoreKey> keyed(n);
  for (int64_t i = 0; i < n; ++i) keyed[i] = {descending_score_key(s[i]), i};
  std::sort(keyed.begin(), keyed.end());
  std::vector<int64_t> order(n);
  for (int64_t r = 0; r < n; ++r) order[r] = keyed[r].idx;

  const at::Tensor b = boxes_in_acc_type(boxes);
  std::vector<uint8_t> keep(n, 0);
  AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "nms_cpu", [&] {
    greedy_nms<scalar_t>(b.data_ptr<scalar_t>(), order.data(), n, threshold_for<scalar_t>(iou_threshold),
                         keep.data());
  });
  std::vector<int64_t> kept;
  for (int64_t r = 0; r < n; ++r)
    if (keep[r]) kept.push_back(order[r]);
  return to_index_tensor(kept, boxes);
}

// ---------------------------------------------------------------- batched_nms

// Boxes in score order; then grouped by class, keeping the score order within
// each class (a counting sort when the class ids span a small range).
at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                           double iou_threshold) {
  check_batched_nms_args(boxes, scores, idxs, iou_threshold);
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  const std::vector<double> s = scores_as_double(scores);
  std::vector<ScoreKey> keyed(n);
  for (int64_t i = 0; i < n; ++i) keyed[i] = {descending_score_key(s[i]), i};
  std::sort(keyed.begin(), keyed.end());

  const at::Tensor cls_t = idxs.to(at::kLong).contiguous();
  const int64_t* cls = cls_t.data_ptr<int64_t>();
  int64_t cmin = cls[0], cmax = cls[0];
  for (int64_t i = 1; i < n; ++i) {
    cmin = std::min(cmin, cls[i]);
    cmax = std::max(cmax, cls[i]);
  }
  // grouped[g]: the box (input index) at place g when grouped by class; seg_start: where each class begins.
  std::vector<int64_t> grouped(n);
  std::vector<int64_t> seg_start;
  // cmax - cmin computed in unsigned arithmetic: no overflow for any int64 ids.
  const uint64_t span = static_cast<uint64_t>(cmax) - static_cast<uint64_t>(cmin);
  if (span < static_cast<uint64_t>(2 * n + 1024)) {
    std::vector<int64_t> count(span + 2, 0);
    for (int64_t i = 0; i < n; ++i) ++count[static_cast<uint64_t>(cls[i]) - static_cast<uint64_t>(cmin) + 1];
    for (uint64_t c = 0; c <= span; ++c) {
      if (count[c + 1] > 0) seg_start.push_back(count[c]);
      count[c + 1] += count[c];
    }
    for (int64_t r = 0; r < n; ++r) {
      const int64_t i = keyed[r].idx;
      grouped[count[static_cast<uint64_t>(cls[i]) - static_cast<uint64_t>(cmin)]++] = i;
    }
  } else {
    std::vector<std::pair<int64_t, int64_t>> by_class(n);  // (class, rank)
    for (int64_t r = 0; r < n; ++r) by_class[r] = {cls[keyed[r].idx], r};
    std::sort(by_class.begin(), by_class.end());
    for (int64_t g = 0; g < n; ++g) {
      grouped[g] = keyed[by_class[g].second].idx;
      if (g == 0 || by_class[g].first != by_class[g - 1].first) seg_start.push_back(g);
    }
  }
  const int64_t nseg = static_cast<int64_t>(seg_start.size());
  seg_start.push_back(n);

  const at::Tensor b = boxes_in_acc_type(boxes);
  std::vector<uint8_t> keep_grouped(n, 0);
  AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "batched_nms_cpu", [&] {
    const scalar_t* bp = b.data_ptr<scalar_t>();
    const scalar_t thr = threshold_for<scalar_t>(iou_threshold);
    // Each class writes only its own part of keep_grouped.
    // Classes in parallel only when there is enough work (about 64 element
    // operations a box: sort, index, suppression tests) to pay for a region.
    at::parallel_for(0, nseg, cpu::grain_for_total(nseg, static_cast<double>(n) * 64.0), [&](int64_t sb, int64_t se) {
      for (int64_t k = sb; k < se; ++k) {
        const int64_t start = seg_start[k];
        greedy_nms<scalar_t>(bp, grouped.data() + start, seg_start[k + 1] - start, thr, keep_grouped.data() + start);
      }
    });
  });
  std::vector<uint8_t> keep(n, 0);  // by input index
  for (int64_t g = 0; g < n; ++g)
    if (keep_grouped[g]) keep[grouped[g]] = 1;
  std::vector<int64_t> out;
  for (int64_t r = 0; r < n; ++r)
    if (keep[keyed[r].idx]) out.push_back(keyed[r].idx);
  return to_index_tensor(out, boxes);
}

// ------------------------------------------------------------------- soft_nms

template <typename S>
struct HeapEntry {
  S score;
  int64_t idx;
  // priority_queue puts the "largest" on top: higher score, then lower index.
  bool operator<(const HeapEntry& o) const { return score != o.score ? score < o.score : idx > o.idx; }
};

// T: the type of the boxes' coordinates and IoU; S: of the scores; W: the wider
// of the two, in which weights are computed.
template <typename T, typename S>
void soft_nms_impl(const T* boxes, const S* scores_in, int64_t n, double iou_threshold, double sigma,
                   double score_threshold, SoftNmsMethod method, std::vector<int64_t>& out_idx,
                   std::vector<S>& out_score) {
  using W = typename std::conditional<std::is_same<T, double>::value || std::is_same<S, double>::value, double,
                                      float>::type;
  const W thr = threshold_for<W>(iou_threshold);
  const W sig = static_cast<W>(sigma);
  std::vector<S> cur(scores_in, scores_in + n);
  // alive: 0 = dropped or selected, 1 = still a candidate.
  std::vector<uint8_t> alive(n, 0);
  std::vector<HeapEntry<S>> heap;
  heap.reserve(n);
  for (int64_t i = 0; i < n; ++i) {
    if (static_cast<double>(cur[i]) >= score_threshold) {  // false for NaN
      alive[i] = 1;
      heap.push_back({cur[i], i});
    }
  }
  std::make_heap(heap.begin(), heap.end());
  std::vector<int64_t> identity(n);
  for (int64_t i = 0; i < n; ++i) identity[i] = i;
  CullingIndex<T> ix;
  ix.build(boxes, identity.data(), n);
  std::vector<T> iou_buf;

  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end());
    const HeapEntry<S> top = heap.back();
    heap.pop_back();
    const int64_t i = top.idx;
    if (!alive[i]) continue;
    // Lazy decrease-key: a decayed score stays in the heap at its old (higher)
    // value and is re-queued at its current value when it reaches the top. So
    // every alive box has an entry >= its score, and an entry equal to its
    // score at the top is the maximum (ties: lower index). Scores that grow
    // (negative scores times a weight < 1) are queued when they change, and
    // their entries that fell below the score are dropped here.
    if (top.score > cur[i]) {
      heap.push_back({cur[i], i});
      std::push_heap(heap.begin(), heap.end());
      continue;
    }
    if (top.score < cur[i]) continue;
    alive[i] = 0;
    out_idx.push_back(i);
    out_score.push_back(cur[i]);
    const int32_t p = ix.position[i];
    if (p < 0) continue;  // non-finite box: decays nothing
    const T bx1 = ix.x1[p], by1 = ix.y1[p], bx2 = ix.x2[p], by2 = ix.y2[p], ba = ix.area[p];
    ix.for_each_candidate_range(p, [&](int64_t lo, int64_t hi) {
      iou_buf.resize(hi - lo);
      iou_range(ix.x1.data(), ix.y1.data(), ix.x2.data(), ix.y2.data(), ix.area.data(), iou_buf.data(), lo, hi, bx1,
                by1, bx2, by2, ba);
      for (int64_t q = lo; q < hi; ++q) {
        const T iou = iou_buf[q - lo];
        if (!(iou > T(0))) continue;
        const int64_t j = ix.input[q];
        if (!alive[j]) continue;
        const W w = soft_nms_weight<W>(method, static_cast<W>(iou), thr, sig);
        if (w == W(1)) continue;
        const S s_new = static_cast<S>(static_cast<W>(cur[j]) * w);
        if (method == SoftNmsMethod::Hard || !(static_cast<double>(s_new) >= score_threshold)) {
          alive[j] = 0;  // removed
          continue;
        }
        if (s_new > cur[j]) {
          heap.push_back({s_new, j});
          std::push_heap(heap.begin(), heap.end());
        }
        cur[j] = s_new;
      }
    });
  }
}

std::tuple<at::Tensor, at::Tensor> soft_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                                                double iou_threshold, double sigma, double score_threshold,
                                                c10::string_view method_name) {
  check_soft_nms_args(boxes, scores, iou_threshold, sigma, score_threshold, method_name);
  const SoftNmsMethod method = parse_soft_nms_method(method_name);
  const int64_t n = boxes.size(0);
  const at::Tensor b = boxes_in_acc_type(boxes);
  const at::Tensor s = scores.to(accumulate_type_of(scores.scalar_type())).contiguous();
  std::vector<int64_t> idx;
  at::Tensor out_scores;
  AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "soft_nms_cpu", [&] {
    using T = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "soft_nms_cpu_scores", [&] {
      using S = scalar_t;
      std::vector<S> sc;
      if (n > 0)
        soft_nms_impl<T, S>(b.data_ptr<T>(), s.data_ptr<S>(), n, iou_threshold, sigma, score_threshold, method, idx,
                            sc);
      out_scores = at::empty({static_cast<int64_t>(sc.size())}, s.options());
      if (!sc.empty()) std::memcpy(out_scores.data_ptr<S>(), sc.data(), sc.size() * sizeof(S));
    });
  });
  return {to_index_tensor(idx, boxes), out_scores.to(scores.scalar_type())};
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CPU, m) {
  m.impl("nms", &pydetops::nms_cpu);
  m.impl("batched_nms", &pydetops::batched_nms_cpu);
  m.impl("soft_nms", &pydetops::soft_nms_cpu);
}
