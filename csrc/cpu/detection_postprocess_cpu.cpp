// CPU kernel of detection_postprocess. Images are split over threads (each
// image is done by one thread, start to end: the result does not depend on the
// thread count). Per image and level the (anchor, class) pairs above the score
// threshold are gathered, the topk_per_level best are selected (partial sort:
// no cap on k), decoded, clipped and size-filtered (common/postprocess_math.h).
// The survivors of all levels are sorted once by (score descending, position)
// and visited in that order: a candidate is kept unless a kept box of its NMS
// group has IoU > nms_thresh with it (common/nms_math.h, the nms op's test),
// which is greedy NMS per group; the visit stops at max_det kept boxes, which
// are then already the max_det best.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "common/checks.h"
#include "common/nms_math.h"
#include "common/postprocess_math.h"
#include "cpu/vec_math_cpu.h"
#include "ops/decode_boxes.h"
#include "ops/detection_postprocess.h"

namespace pydetops {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> detection_postprocess_cpu(
    const at::Tensor& scores, const at::Tensor& codes, const at::Tensor& anchors, at::IntArrayRef level_sizes,
    at::IntArrayRef image_sizes, double score_thresh, int64_t topk_per_level, double nms_thresh, int64_t max_det,
    at::ArrayRef<double> weights, double bbox_xform_clip, double min_size, bool nms_by_level) {
  check_detection_postprocess_args(scores, codes, anchors, level_sizes, image_sizes, score_thresh, topk_per_level,
                                   nms_thresh, max_det, weights, bbox_xform_clip, min_size);
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
        // Compared as torch compares a tensor with a Python float: in the tensor's dtype.
        const float thr_s = static_cast<float>(static_cast<score_t>(score_thresh));
        const double thr_d = score_thresh;
        const bool score_is_double = std::is_same<score_t, double>::value;
        const acc_t min_sz = static_cast<acc_t>(static_cast<in_t>(min_size));
        const acc_t iou_thr = threshold_for<acc_t>(nms_thresh);
        at::parallel_for(0, nimg, 1, [&](int64_t i0, int64_t i1) {
          struct Cand {
            double score;
            int64_t flat;  // anchor * C + class (anchor over all levels)
            int64_t group;
            acc_t box[4];
          };
          std::vector<int64_t> idx;
          std::vector<Cand> cands;
          std::vector<int64_t> order;
          for (int64_t img = i0; img < i1; ++img) {
            const score_t* si = sp + img * na * nc;
            const in_t* ci = cp + img * na * code_cols;
            const in_t* ai = ap + (shared_anchors ? 0 : img * na * 4);
            const auto p = make_decode_params<acc_t>(weights, bbox_xform_clip,
                                                     at::IntArrayRef(image_sizes.data() + 2 * img, 2));
            cands.clear();
            for (int64_t l = 0; l < nlev; ++l) {
              idx.clear();
              for (int64_t f = level_start[l] * nc; f < level_start[l + 1] * nc; ++f) {
                const bool pass = score_is_double ? static_cast<double>(si[f]) > thr_d
                                                  : static_cast<float>(si[f]) > thr_s;
                if (pass) idx.push_back(f);
              }
              auto better = [&](int64_t x, int64_t y) {
                const double vx = static_cast<double>(si[x]), vy = static_cast<double>(si[y]);
                return vx > vy || (vx == vy && x < y);
              };
              int64_t keep = static_cast<int64_t>(idx.size());
              if (topk_per_level >= 0 && keep > topk_per_level) {
                keep = topk_per_level;
                std::partial_sort(idx.begin(), idx.begin() + keep, idx.end(), better);
              } else {
                std::sort(idx.begin(), idx.end(), better);
              }
              for (int64_t q = 0; q < keep; ++q) {
                const int64_t f = idx[q], a = f / nc, c = f % nc;
                Cand cand;
                cand.score = static_cast<double>(si[f]);
                cand.flat = f;
                cand.group = nms_by_level ? l * nc + c : c;
                const in_t* code = ci + a * code_cols + (per_class_codes ? 4 * c : 0);
                if (postprocess::decode_candidate<in_t, acc_t, vecmath::CpuMath>(ai + 4 * a, code, p, min_sz, cand.box)) {
                  cands.push_back(cand);
                }
              }
            }
            const int64_t nk = static_cast<int64_t>(cands.size());
            order.resize(static_cast<size_t>(nk));
            std::iota(order.begin(), order.end(), int64_t(0));
            std::stable_sort(order.begin(), order.end(),
                             [&](int64_t x, int64_t y) { return cands[x].score > cands[y].score; });
            std::vector<std::vector<int64_t>> kept_by_group(static_cast<size_t>(nms_by_level ? nlev * nc : nc));
            int64_t kept = 0;
            for (int64_t q = 0; q < nk && kept < max_det; ++q) {
              const Cand& cd_q = cands[order[q]];
              const acc_t* b = cd_q.box;
              const acc_t area = box_area_xyxy(b[0], b[1], b[2], b[3]);
              bool suppressed = false;
              for (int64_t k : kept_by_group[cd_q.group]) {
                const acc_t* o = cands[k].box;
                const acc_t iou = iou_with_areas(o[0], o[1], o[2], o[3], box_area_xyxy(o[0], o[1], o[2], o[3]), b[0],
                                                 b[1], b[2], b[3], area);
                if (iou > iou_thr) {
                  suppressed = true;
                  break;
                }
              }
              if (suppressed) continue;
              kept_by_group[cd_q.group].push_back(order[q]);
              const int64_t o = img * max_det + kept;
              for (int j = 0; j < 4; ++j) ob[4 * o + j] = static_cast<in_t>(b[j]);
              os[o] = static_cast<score_t>(cd_q.score);
              ol[o] = cd_q.flat % nc;
              ++kept;
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
