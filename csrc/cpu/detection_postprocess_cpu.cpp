// CPU kernel of detection_postprocess, in three passes:
//  1. scan: the (anchor, class) pairs above score_thresh are found in fixed
//     chunks of each (image, level) range, the chunks spread over threads
//     (float32 scores: 8 compares per AVX2 instruction and a bit mask, so a pass
//     over the scores costs about a read of them). The chunk results are joined in
//     index order, so nothing depends on the thread count.
//  2. per image (images spread over threads) and level: with topk_per_class >= 0,
//     the topk_per_class best of each class; then the topk_per_level best
//     (nth_element: selection, no sort).
//  3. per image: the candidates of all levels are visited in the order
//     (score descending, anchor * C + class ascending), sorted lazily in growing
//     pieces (nth_element + sort of the piece), because the visit stops at max_det
//     kept boxes. Each visited candidate is decoded, clipped and size-filtered
//     (common/postprocess_math.h) and kept unless a kept box of its NMS group has
//     IoU > nms_thresh with it (common/nms_math.h): greedy NMS per group, and the
//     max_det kept boxes are then already the max_det best.
// The order is a strict total order (each pair once per image), so the result is
// the one of a full sort.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
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

struct ScanTask {
  int64_t img, level, begin, end;  // flat pair range [begin, end) within the image
};

// ---------------------------------------------------------- 2./3. selection

struct Cand {
  double score;
  int64_t flat;  // anchor * C + class (anchors over all levels)
};

// The visit order: score descending, then flat ascending (a strict total order).
inline bool better(const Cand& x, const Cand& y) {
  return x.score > y.score || (x.score == y.score && x.flat < y.flat);
}

// Keeps the k best of v (any order); k < 0 keeps all.
inline void keep_best(std::vector<Cand>& v, int64_t k) {
  if (k < 0 || static_cast<int64_t>(v.size()) <= k) return;
  std::nth_element(v.begin(), v.begin() + k, v.end(), better);
  v.resize(static_cast<size_t>(k));
}

// In place: of each class, only the k best of cands stay (any order).
void keep_best_per_class(std::vector<Cand>& cands, int64_t nc, int64_t k, std::vector<int64_t>& count,
                         std::vector<Cand>& tmp) {
  if (k < 0 || static_cast<int64_t>(cands.size()) <= k) return;
  count.assign(static_cast<size_t>(nc + 1), 0);
  bool over = false;
  for (const Cand& c : cands) over |= ++count[c.flat % nc + 1] > k;
  if (!over) return;
  for (int64_t c = 0; c < nc; ++c) count[c + 1] += count[c];  // bucket starts
  tmp.resize(cands.size());
  std::vector<int64_t> pos(count.begin(), count.end() - 1);
  for (const Cand& c : cands) tmp[pos[c.flat % nc]++] = c;
  size_t w = 0;
  for (int64_t c = 0; c < nc; ++c) {
    auto b = tmp.begin() + count[c], e = tmp.begin() + count[c + 1];
    if (e - b > k) {
      std::nth_element(b, b + k, e, better);
      e = b + k;
    }
    for (auto it = b; it != e; ++it) cands[w++] = *it;
  }
  cands.resize(w);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> detection_postprocess_cpu(
    const at::Tensor& scores, const at::Tensor& codes, const at::Tensor& anchors, at::IntArrayRef level_sizes,
    at::IntArrayRef image_sizes, double score_thresh, int64_t topk_per_level, double nms_thresh, int64_t max_det,
    at::ArrayRef<double> weights, double bbox_xform_clip, double min_size, bool nms_by_level,
    int64_t topk_per_class) {
  check_detection_postprocess_args(scores, codes, anchors, level_sizes, image_sizes, score_thresh, topk_per_level,
                                   nms_thresh, max_det, weights, bbox_xform_clip, min_size, topk_per_class);
  const std::vector<int64_t> levels = detection_level_sizes(scores, level_sizes);
  const int64_t nimg = scores.size(0), na = scores.size(1), nc = scores.size(2);
  const int64_t nlev = static_cast<int64_t>(levels.size());
  const bool per_class_codes = codes.size(2) == 4 * nc && nc != 1;
  const int64_t code_cols = codes.size(2);
  at::Tensor out_boxes = at::zeros({nimg, max_det, 4}, codes.options());
  at::Tensor out_scores = at::zeros({nimg, max_det}, scores.options());
  at::Tensor out_labels = at::full({nimg, max_det}, -1, scores.options().dtype(at::kLong));
  at::Tensor out_counts = at::zeros({nimg}, scores.options().dtype(at::kLong));
  if (nimg == 0 || max_det == 0 || na == 0 || nc == 0) return {out_boxes, out_scores, out_labels, out_counts};
  const at::Tensor s = scores.contiguous();
  const at::Tensor cd = codes.contiguous();
  // As decode_boxes: the anchors are cast to the codes' dtype first.
  const at::Tensor an = anchors.to(codes.scalar_type()).contiguous();
  const bool shared_anchors = anchors.dim() == 2;
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
  const int64_t ntasks = static_cast<int64_t>(tasks.size());
  std::vector<std::vector<int64_t>> found(static_cast<size_t>(ntasks));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, codes.scalar_type(), "detection_postprocess_cpu", [&] {
    using in_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "detection_postprocess_cpu_s", [&] {
      using score_t = scalar_t;
      AT_DISPATCH_FLOATING_TYPES(acc_type, "detection_postprocess_cpu_acc", [&] {
        using acc_t = scalar_t;
        const score_t* sp = s.data_ptr<score_t>();
        const in_t* cp = cd.data_ptr<in_t>();
        const in_t* ap = an.data_ptr<in_t>();
        in_t* ob = out_boxes.data_ptr<in_t>();
        score_t* os = out_scores.data_ptr<score_t>();
        int64_t* ol = out_labels.data_ptr<int64_t>();
        int64_t* on = out_counts.data_ptr<int64_t>();
        const acc_t min_sz = static_cast<acc_t>(static_cast<in_t>(min_size));
        const acc_t iou_thr = threshold_for<acc_t>(nms_thresh);

        // 1. scan
        at::parallel_for(0, ntasks, 1, [&](int64_t t0, int64_t t1) {
          for (int64_t t = t0; t < t1; ++t) {
            const ScanTask& tk = tasks[t];
            scan_above<score_t>(sp + tk.img * na * nc + tk.begin, tk.end - tk.begin, score_thresh, tk.begin,
                                found[t]);
          }
        });

        // 2. and 3., per image
        const int64_t ngroups = nms_by_level ? nlev * nc : nc;
        at::parallel_for(0, nimg, 1, [&](int64_t i0, int64_t i1) {
          std::vector<Cand> cands, level_cands, tmp;
          std::vector<int64_t> count;
          std::vector<int64_t> group_head(static_cast<size_t>(ngroups));
          std::vector<int64_t> kept_next(static_cast<size_t>(max_det));
          std::vector<acc_t> kept_box(static_cast<size_t>(4 * max_det));
          for (int64_t img = i0; img < i1; ++img) {
            const score_t* si = sp + img * na * nc;
            cands.clear();
            for (int64_t l = 0; l < nlev; ++l) {
              level_cands.clear();
              for (int64_t t = first_task[img * nlev + l]; t < first_task[img * nlev + l + 1]; ++t) {
                for (int64_t f : found[t]) level_cands.push_back({static_cast<double>(si[f]), f});
                std::vector<int64_t>().swap(found[t]);
              }
              keep_best_per_class(level_cands, nc, topk_per_class, count, tmp);
              keep_best(level_cands, topk_per_level);
              cands.insert(cands.end(), level_cands.begin(), level_cands.end());
            }

            const in_t* ci = cp + img * na * code_cols;
            const in_t* ai = ap + (shared_anchors ? 0 : img * na * 4);
            const auto p = make_decode_params<acc_t>(weights, bbox_xform_clip,
                                                     at::IntArrayRef(image_sizes.data() + 2 * img, 2));
            std::fill(group_head.begin(), group_head.end(), int64_t(-1));
            const int64_t nk = static_cast<int64_t>(cands.size());
            int64_t kept = 0, done = 0;
            int64_t piece = std::max<int64_t>(256, 2 * max_det);
            while (done < nk && kept < max_det) {
              const int64_t end = std::min(nk, done + piece);
              if (end < nk) std::nth_element(cands.begin() + done, cands.begin() + end, cands.end(), better);
              std::sort(cands.begin() + done, cands.begin() + end, better);
              for (int64_t q = done; q < end && kept < max_det; ++q) {
                const Cand& cq = cands[q];
                const int64_t a = cq.flat / nc, c = cq.flat % nc;
                acc_t b[4];
                const in_t* code = ci + a * code_cols + (per_class_codes ? 4 * c : 0);
                if (!postprocess::decode_candidate<in_t, acc_t, vecmath::CpuMath>(ai + 4 * a, code, p, min_sz, b)) {
                  continue;
                }
                int64_t g = c;
                if (nms_by_level) {
                  const int64_t l = std::upper_bound(level_start.begin(), level_start.end(), a) - level_start.begin() - 1;
                  g = l * nc + c;
                }
                const acc_t area = box_area_xyxy(b[0], b[1], b[2], b[3]);
                bool suppressed = false;
                for (int64_t k = group_head[g]; k >= 0; k = kept_next[k]) {
                  const acc_t* o = kept_box.data() + 4 * k;
                  const acc_t iou = iou_with_areas(o[0], o[1], o[2], o[3], box_area_xyxy(o[0], o[1], o[2], o[3]),
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
                const int64_t o = img * max_det + kept;
                for (int j = 0; j < 4; ++j) ob[4 * o + j] = static_cast<in_t>(b[j]);
                os[o] = static_cast<score_t>(cq.score);
                ol[o] = c;
                ++kept;
              }
              done = end;
              piece *= 2;
            }
            on[img] = kept;
          }
        });
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
