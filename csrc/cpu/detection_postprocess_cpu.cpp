// CPU kernel of detection_postprocess, in three passes:
//  1. scan: the (anchor, class) pairs above score_thresh are found in fixed
//     chunks of each (image, level) range, the chunks spread over threads when
//     there are many (float32 scores: 8 compares per AVX2 instruction and a bit
//     mask, so a pass over the scores costs about a read of them). Each chunk
//     turns its pairs into keys (PackedKey / WideKey below), grouped by class when
//     topk_per_class >= 0. Nothing depends on the thread count: the later steps
//     select by a strict total order, so only the set of keys matters.
//  2. with topk_per_class >= 0, the topk_per_class best of each (image, level,
//     class), those spread over threads when there are many keys; then per image
//     and level the topk_per_level best (keep_best: a sample pivot filter, then
//     nth_element; no sort).
//  3. per image (images spread over threads): the candidates of all levels are
//     visited in the order (score descending, anchor * C + class ascending),
//     sorted lazily in growing pieces (nth_element + sort of the piece), because
//     the visit stops at max_det kept boxes. Each visited candidate is decoded,
//     clipped and size-filtered (common/postprocess_math.h) and kept unless a kept
//     box of its NMS group has IoU > nms_thresh with it (common/nms_math.h):
//     greedy NMS per group, and the max_det kept boxes are then already the
//     max_det best. The order is a strict total order (each pair once per image),
//     so the result is the one of a full sort.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(PYDETOPS_NO_TARGET_CLONES)
#include <immintrin.h>
#define PYDETOPS_SCAN_AVX2 1
#endif

#include "common/checks.h"
#include "common/nms_math.h"
#include "common/postprocess_math.h"
#include "cpu/vec_math_cpu.h"
#include "ops/decode_boxes.h"
#include "ops/detection_postprocess.h"

namespace pydetops {
namespace {

// ------------------------------------------------------------------- 1. scan

// Appends base + i for every i in [0, n) with x[i] > thr (NaN never passes).
template <typename score_t, typename cmp_t>
void scan_plain(const score_t* x, int64_t n, cmp_t thr, int64_t base, std::vector<int64_t>& out) {
  for (int64_t i = 0; i < n; ++i) {
    if (static_cast<cmp_t>(x[i]) > thr) out.push_back(base + i);
  }
}

#ifdef PYDETOPS_SCAN_AVX2
__attribute__((target("avx2"))) void scan_f32_avx2(const float* x, int64_t n, float thr, int64_t base,
                                                   std::vector<int64_t>& out) {
  const __m256 t = _mm256_set1_ps(thr);
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    // _CMP_GT_OQ: false for NaN, as x > thr
    const uint32_t m0 = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), t, _CMP_GT_OQ)));
    const uint32_t m1 =
        static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i + 8), t, _CMP_GT_OQ)));
    const uint32_t m2 =
        static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i + 16), t, _CMP_GT_OQ)));
    const uint32_t m3 =
        static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i + 24), t, _CMP_GT_OQ)));
    uint32_t m = m0 | (m1 << 8) | (m2 << 16) | (m3 << 24);
    while (m != 0) {
      out.push_back(base + i + __builtin_ctz(m));
      m &= m - 1;
    }
  }
  scan_plain<float, float>(x + i, n - i, thr, base + i, out);
}

bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}
#endif

// score_t float: compared in float (avx2 where the CPU has it); double in double;
// half / bfloat16 converted to float and compared with the threshold rounded to
// their dtype (as torch compares a tensor with a Python float: in the tensor's dtype).
template <typename score_t>
void scan_above(const score_t* x, int64_t n, double score_thresh, int64_t base, std::vector<int64_t>& out) {
  if (std::is_same<score_t, double>::value) {
    scan_plain<score_t, double>(x, n, score_thresh, base, out);
    return;
  }
  const float thr = static_cast<float>(static_cast<score_t>(score_thresh));
#ifdef PYDETOPS_SCAN_AVX2
  if (std::is_same<score_t, float>::value && cpu_has_avx2()) {
    scan_f32_avx2(reinterpret_cast<const float*>(x), n, thr, base, out);
    return;
  }
#endif
  scan_plain<score_t, float>(x, n, thr, base, out);
}

constexpr int64_t kScanChunk = int64_t(1) << 16;  // pairs per scan task (fixed: results join in index order)
// Work below these sizes runs on the calling thread: a parallel region costs more
// than it saves there (and on a busy machine a descheduled partner thread stalls it).
constexpr int64_t kScanTasksPerThread = 16;        // ~1 M pairs, ~0.15 ms of scan
constexpr int64_t kCapKeysPerThread = int64_t(1) << 16;

struct ScanTask {
  int64_t img, level, begin, end;  // flat pair range [begin, end) within the image
};

// ---------------------------------------------------------- 2./3. selection

// Two representations of a candidate (image-local flat = anchor * C + class) with
// the visit order "score descending, then flat ascending" (a strict total order):
//  - PackedKey: one uint64, the float score's order-preserving bits above the
//    complement of a 32-bit flat, so the order is one integer compare (scores of
//    float, half or bfloat16, with fewer than 2^32 pairs per image);
//  - WideKey: the score as a double and a 64-bit flat (double scores, huge inputs).
struct PackedKey {
  using key_t = uint64_t;
  static key_t make(double score, int64_t flat) {
    float f = static_cast<float>(score);  // exact: the score's dtype is float or narrower
    if (f == 0.0f) f = 0.0f;              // -0 and +0 are equal scores: the flat decides
    uint32_t b;
    std::memcpy(&b, &f, sizeof b);
    const uint32_t ord = (b & 0x80000000u) ? ~b : (b | 0x80000000u);  // NaN never gets here
    return (static_cast<uint64_t>(ord) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(flat));
  }
  static int64_t flat(key_t k) { return static_cast<int64_t>(0xFFFFFFFFu - static_cast<uint32_t>(k)); }
  struct Better {
    bool operator()(key_t x, key_t y) const { return x > y; }
  };
};

struct WideKey {
  struct key_t {
    double score;
    int64_t flat;
  };
  static key_t make(double score, int64_t flat) { return {score, flat}; }
  static int64_t flat(const key_t& k) { return k.flat; }
  struct Better {
    bool operator()(const key_t& x, const key_t& y) const {
      return x.score > y.score || (x.score == y.score && x.flat < y.flat);
    }
  };
};

// q = f / d, r = f % d for 0 <= f, 0 < d: through a double reciprocal and one
// correction step (exact for f < 2^50), a 64-bit division beyond.
struct DivMod {
  int64_t d;
  double inv;
  explicit DivMod(int64_t d_) : d(d_), inv(1.0 / static_cast<double>(d_)) {}
  void operator()(int64_t f, int64_t& q, int64_t& r) const {
    if (f >= (int64_t(1) << 50)) {
      q = f / d;
      r = f - q * d;
      return;
    }
    q = static_cast<int64_t>(static_cast<double>(f) * inv);
    r = f - q * d;
    if (r < 0) {
      --q;
      r += d;
    } else if (r >= d) {
      ++q;
      r -= d;
    }
  }
};

// Keeps the k best of v[from:] (any order); k < 0 keeps all. Large ranges are
// first cut down by a pivot taken from a fixed sample (a branch-free filter pass:
// every element at least as good as the pivot stays), so that nth_element runs on
// about 1.25 k + a margin elements instead of all; if the filter keeps fewer
// than k, nth_element runs on the whole range. Either way the result is the set
// of the k best under the strict total order, whatever the sample.
template <typename Keys, typename V>
void keep_best(V& v, size_t from, int64_t k, V& tmp) {
  const typename Keys::Better better;
  const int64_t n = static_cast<int64_t>(v.size() - from);
  if (k < 0 || n <= k) return;
  auto b = v.begin() + from;
  constexpr int64_t kSample = 256;
  if (n >= 4 * k && n >= 4 * kSample) {
    tmp.resize(static_cast<size_t>(kSample));
    for (int64_t i = 0; i < kSample; ++i) tmp[i] = b[(i * n) / kSample];
    // the sample rank where about 1.25 k of n are expected at least as good, plus a margin
    const int64_t r = std::min<int64_t>(kSample - 1, (k * kSample * 5) / (4 * n) + 8);
    std::nth_element(tmp.begin(), tmp.begin() + r, tmp.end(), better);
    const auto pivot = tmp[r];
    tmp.resize(static_cast<size_t>(n));
    int64_t w = 0;
    for (int64_t i = 0; i < n; ++i) {
      tmp[w] = b[i];
      w += !better(pivot, b[i]);  // b[i] at least as good as the pivot
    }
    if (w >= k) {
      std::nth_element(tmp.begin(), tmp.begin() + k, tmp.begin() + w, better);
      std::copy(tmp.begin(), tmp.begin() + k, b);
      v.resize(from + static_cast<size_t>(k));
      return;
    }
  }
  std::nth_element(b, b + k, v.end(), better);
  v.resize(from + static_cast<size_t>(k));
}

struct Options {
  int64_t nimg, na, nc, nlev, code_cols, max_det, topk_per_level, topk_per_class;
  bool per_class_codes, shared_anchors, nms_by_level;
  double score_thresh;
};

// The three passes for one choice of key, score, code and accumulation types.
template <typename Keys, typename score_t, typename in_t, typename acc_t>
void run_postprocess(const Options& o, const std::vector<int64_t>& level_start, const std::vector<ScanTask>& tasks,
                     const std::vector<int64_t>& first_task, const score_t* sp, const in_t* cp, const in_t* ap,
                     at::IntArrayRef image_sizes, at::ArrayRef<double> weights, double bbox_xform_clip,
                     acc_t min_sz, acc_t iou_thr, in_t* ob, score_t* os, int64_t* ol, int64_t* on) {
  using key_t = typename Keys::key_t;
  const typename Keys::Better better;
  const int64_t nimg = o.nimg, na = o.na, nc = o.nc, nlev = o.nlev, max_det = o.max_det;
  const int64_t ntasks = static_cast<int64_t>(tasks.size());
  const DivMod divmod(nc);
  const bool cap_classes = o.topk_per_class >= 0;

  // 1. scan, per task: the keys of the pairs above the threshold, in index order, or
  // (with the per-class cap) grouped by class: class c's keys are
  // keyed[t][class_off[t][c] : class_off[t][c + 1]].
  std::vector<std::vector<key_t>> keyed(static_cast<size_t>(ntasks));
  std::vector<std::vector<int64_t>> class_off(static_cast<size_t>(cap_classes ? ntasks : 0));
  at::parallel_for(0, ntasks, kScanTasksPerThread, [&](int64_t t0, int64_t t1) {
    std::vector<int64_t> found, cls, pos;
    for (int64_t t = t0; t < t1; ++t) {
      const ScanTask& tk = tasks[t];
      const score_t* si = sp + tk.img * na * nc;
      found.clear();
      scan_above<score_t>(si + tk.begin, tk.end - tk.begin, o.score_thresh, tk.begin, found);
      std::vector<key_t>& out = keyed[t];
      out.resize(found.size());
      if (!cap_classes) {
        for (size_t i = 0; i < found.size(); ++i) out[i] = Keys::make(static_cast<double>(si[found[i]]), found[i]);
        continue;
      }
      std::vector<int64_t>& off = class_off[t];
      off.assign(static_cast<size_t>(nc + 1), 0);
      cls.resize(found.size());
      for (size_t i = 0; i < found.size(); ++i) {
        int64_t a, c;
        divmod(found[i], a, c);
        cls[i] = c;
        ++off[c + 1];
      }
      for (int64_t c = 0; c < nc; ++c) off[c + 1] += off[c];
      pos.assign(off.begin(), off.end() - 1);
      for (size_t i = 0; i < found.size(); ++i) {
        out[pos[cls[i]]++] = Keys::make(static_cast<double>(si[found[i]]), found[i]);
      }
    }
  });

  // 2a. the per-class cap, per (image, level, class)
  std::vector<std::vector<key_t>> capped(static_cast<size_t>(cap_classes ? nimg * nlev * nc : 0));
  if (cap_classes) {
    int64_t nkeys = 0;
    for (const auto& v : keyed) nkeys += static_cast<int64_t>(v.size());
    const int64_t ncols = nimg * nlev * nc;
    const int64_t grain = nkeys >= 2 * kCapKeysPerThread ? 1 : ncols;
    at::parallel_for(0, ncols, grain, [&](int64_t j0, int64_t j1) {
      std::vector<key_t> tmp;
      for (int64_t j = j0; j < j1; ++j) {
        const int64_t il = j / nc, c = j % nc;
        std::vector<key_t>& v = capped[j];
        for (int64_t t = first_task[il]; t < first_task[il + 1]; ++t) {
          v.insert(v.end(), keyed[t].begin() + class_off[t][c], keyed[t].begin() + class_off[t][c + 1]);
        }
        keep_best<Keys>(v, 0, o.topk_per_class, tmp);
      }
    });
    std::vector<std::vector<key_t>>().swap(keyed);
  }

  // 2b. and 3., per image
  at::parallel_for(0, nimg, 1, [&](int64_t i0, int64_t i1) {
    std::vector<key_t> cands, tmp;
    const int64_t ngroups = o.nms_by_level ? nlev * nc : nc;
    std::vector<int64_t> group_head(static_cast<size_t>(ngroups));
    std::vector<int64_t> kept_next(static_cast<size_t>(max_det));
    std::vector<acc_t> kept_box(static_cast<size_t>(4 * max_det));
    for (int64_t img = i0; img < i1; ++img) {
      const score_t* si = sp + img * na * nc;
      cands.clear();
      for (int64_t l = 0; l < nlev; ++l) {
        const size_t from = cands.size();
        const int64_t il = img * nlev + l;
        if (cap_classes) {
          for (int64_t c = 0; c < nc; ++c) {
            std::vector<key_t>& v = capped[il * nc + c];
            cands.insert(cands.end(), v.begin(), v.end());
            std::vector<key_t>().swap(v);
          }
        } else {
          for (int64_t t = first_task[il]; t < first_task[il + 1]; ++t) {
            cands.insert(cands.end(), keyed[t].begin(), keyed[t].end());
            std::vector<key_t>().swap(keyed[t]);
          }
        }
        keep_best<Keys>(cands, from, o.topk_per_level, tmp);
      }

      const in_t* ci = cp + img * na * o.code_cols;
      const in_t* ai = ap + (o.shared_anchors ? 0 : img * na * 4);
      const auto p =
          make_decode_params<acc_t>(weights, bbox_xform_clip, at::IntArrayRef(image_sizes.data() + 2 * img, 2));
      std::fill(group_head.begin(), group_head.end(), int64_t(-1));
      const int64_t nk = static_cast<int64_t>(cands.size());
      int64_t kept = 0, done = 0;
      int64_t piece = std::max<int64_t>(256, 2 * max_det);
      while (done < nk && kept < max_det) {
        // the next piece of the order: selected, then sorted
        const int64_t end = std::min(nk, done + piece);
        if (end < nk) std::nth_element(cands.begin() + done, cands.begin() + end, cands.end(), better);
        std::sort(cands.begin() + done, cands.begin() + end, better);
        for (int64_t q = done; q < end && kept < max_det; ++q) {
          const int64_t f = Keys::flat(cands[q]);
          int64_t a, c;
          divmod(f, a, c);
          acc_t b[4];
          const in_t* code = ci + a * o.code_cols + (o.per_class_codes ? 4 * c : 0);
          if (!postprocess::decode_candidate<in_t, acc_t, vecmath::CpuMath>(ai + 4 * a, code, p, min_sz, b)) {
            continue;
          }
          int64_t g = c;
          if (o.nms_by_level) {
            const int64_t l = std::upper_bound(level_start.begin(), level_start.end(), a) - level_start.begin() - 1;
            g = l * nc + c;
          }
          const acc_t area = box_area_xyxy(b[0], b[1], b[2], b[3]);
          bool suppressed = false;
          for (int64_t k = group_head[g]; k >= 0; k = kept_next[k]) {
            const acc_t* kb = kept_box.data() + 4 * k;
            const acc_t iou = iou_with_areas(kb[0], kb[1], kb[2], kb[3], box_area_xyxy(kb[0], kb[1], kb[2], kb[3]),
                                             b[0], b[1], b[2], b[3], area);
            if (iou > iou_thr) {
              suppressed = true;
              break;
            }
          }
          if (suppressed) continue;
          for (int j = 0; j < 4; ++j) kept_box[4 * kept + j] = b[j];
          kept_next[kept] = group_head[g];
          group_head[g] = kept;
          const int64_t out = img * max_det + kept;
          for (int j = 0; j < 4; ++j) ob[4 * out + j] = static_cast<in_t>(b[j]);
          os[out] = si[f];
          ol[out] = c;
          ++kept;
        }
        done = end;
        piece *= 2;
      }
      on[img] = kept;
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> detection_postprocess_cpu(
    const at::Tensor& scores, const at::Tensor& codes, const at::Tensor& anchors, at::IntArrayRef level_sizes,
    at::IntArrayRef image_sizes, double score_thresh, int64_t topk_per_level, double nms_thresh, int64_t max_det,
    at::ArrayRef<double> weights, double bbox_xform_clip, double min_size, bool nms_by_level,
    int64_t topk_per_class) {
  check_detection_postprocess_args(scores, codes, anchors, level_sizes, image_sizes, score_thresh, topk_per_level,
                                   nms_thresh, max_det, weights, bbox_xform_clip, min_size, topk_per_class);
  const std::vector<int64_t> levels = detection_level_sizes(scores, level_sizes);
  Options o;
  o.nimg = scores.size(0);
  o.na = scores.size(1);
  o.nc = scores.size(2);
  o.nlev = static_cast<int64_t>(levels.size());
  o.per_class_codes = codes.size(2) == 4 * o.nc && o.nc != 1;
  o.code_cols = codes.size(2);
  o.shared_anchors = anchors.dim() == 2;
  o.nms_by_level = nms_by_level;
  o.max_det = max_det;
  o.topk_per_level = topk_per_level;
  o.topk_per_class = topk_per_class;
  o.score_thresh = score_thresh;
  const int64_t nimg = o.nimg, na = o.na, nc = o.nc, nlev = o.nlev;
  at::Tensor out_boxes = at::zeros({nimg, max_det, 4}, codes.options());
  at::Tensor out_scores = at::zeros({nimg, max_det}, scores.options());
  at::Tensor out_labels = at::full({nimg, max_det}, -1, scores.options().dtype(at::kLong));
  at::Tensor out_counts = at::zeros({nimg}, scores.options().dtype(at::kLong));
  if (nimg == 0 || max_det == 0 || na == 0 || nc == 0) return {out_boxes, out_scores, out_labels, out_counts};
  const at::Tensor s = scores.contiguous();
  const at::Tensor cd = codes.contiguous();
  // As decode_boxes: the anchors are cast to the codes' dtype first.
  const at::Tensor an = anchors.to(codes.scalar_type()).contiguous();
  std::vector<int64_t> level_start(static_cast<size_t>(nlev + 1), 0);
  for (int64_t l = 0; l < nlev; ++l) level_start[l + 1] = level_start[l] + levels[l];
  const auto acc_type = accumulate_type_of(codes.scalar_type());

  // The scan tasks: every (image, level) pair range cut into chunks of kScanChunk;
  // first_task[img * nlev + l] is the first task of that range.
  std::vector<ScanTask> tasks;
  std::vector<int64_t> first_task(static_cast<size_t>(nimg * nlev + 1), 0);
  for (int64_t img = 0; img < nimg; ++img) {
    for (int64_t l = 0; l < nlev; ++l) {
      first_task[img * nlev + l] = static_cast<int64_t>(tasks.size());
      // no pair of a level can be kept with topk_per_level == 0 or topk_per_class == 0
      if (topk_per_level == 0 || topk_per_class == 0) continue;
      for (int64_t b = level_start[l] * nc; b < level_start[l + 1] * nc; b += kScanChunk) {
        tasks.push_back({img, l, b, std::min(b + kScanChunk, level_start[l + 1] * nc)});
      }
    }
  }
  first_task[nimg * nlev] = static_cast<int64_t>(tasks.size());
  const bool packed_fits = na * nc <= int64_t(0xFFFFFFFF);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, codes.scalar_type(), "detection_postprocess_cpu", [&] {
    using in_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "detection_postprocess_cpu_s", [&] {
      using score_t = scalar_t;
      AT_DISPATCH_FLOATING_TYPES(acc_type, "detection_postprocess_cpu_acc", [&] {
        using acc_t = scalar_t;
        const acc_t min_sz = static_cast<acc_t>(static_cast<in_t>(min_size));
        const acc_t iou_thr = threshold_for<acc_t>(nms_thresh);
        if (!std::is_same<score_t, double>::value && packed_fits) {
          run_postprocess<PackedKey, score_t, in_t, acc_t>(
              o, level_start, tasks, first_task, s.data_ptr<score_t>(), cd.data_ptr<in_t>(), an.data_ptr<in_t>(),
              image_sizes, weights, bbox_xform_clip, min_sz, iou_thr, out_boxes.data_ptr<in_t>(),
              out_scores.data_ptr<score_t>(), out_labels.data_ptr<int64_t>(), out_counts.data_ptr<int64_t>());
        } else {
          run_postprocess<WideKey, score_t, in_t, acc_t>(
              o, level_start, tasks, first_task, s.data_ptr<score_t>(), cd.data_ptr<in_t>(), an.data_ptr<in_t>(),
              image_sizes, weights, bbox_xform_clip, min_sz, iou_thr, out_boxes.data_ptr<in_t>(),
              out_scores.data_ptr<score_t>(), out_labels.data_ptr<int64_t>(), out_counts.data_ptr<int64_t>());
        }
      });
    });
  });
  return {out_boxes, out_scores, out_labels, out_counts};
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CPU, m) {
  m.impl("detection_postprocess", &pydetops::detection_postprocess_cpu);
}
