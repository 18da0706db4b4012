// CUDA implementation of detection_postprocess, with no host synchronisation
// (every size is known from the shapes; the image sizes travel in one pinned,
// asynchronous copy):
//  1. per level (ATen, on the device): scores not above score_thresh become
//     -inf; with topk_per_class >= 0, a stable descending sort of each (image,
//     class) column ranks the anchors and all but the topk_per_class best become
//     -inf too; a stable descending sort per image gives the level's candidates in
//     (score, index) order; the first min(topk_per_level, A_l * C) are kept.
//  2. decode_kernel: one thread per candidate decodes, clips and size-filters it
//     (common/postprocess_math.h); rejected candidates get the key -inf.
//  3. a stable descending sort of the keys per image gives the NMS order.
//  4. nms_kernel: one block per image visits the candidates in that order; the
//     block's threads test the candidate against the kept boxes of its group in
//     parallel (IoU as common/nms_math.h), and the visit stops at max_det kept
//     boxes or the first rejected candidate.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "common/checks.h"
#include "common/nms_math.h"
#include "common/postprocess_math.h"
#include "ops/decode_boxes.h"
#include "ops/detection_postprocess.h"

namespace pydetops {
namespace {

constexpr int kThreads = 256;

inline unsigned int blocks_for(int64_t n, int threads) {
  return static_cast<unsigned int>(std::min<int64_t>(std::max<int64_t>(1, (n + threads - 1) / threads), 1 << 20));
}

// Candidate (img, q): flat = anchor * C + class, val its (masked) score.
template <typename in_t, typename score_t, typename acc_t>
__global__ void decode_kernel(const int64_t* __restrict__ flat, const score_t* __restrict__ val,
                              const int64_t* __restrict__ col_level, int64_t nimg, int64_t k, int64_t na, int64_t nc,
                              const in_t* __restrict__ codes, int64_t code_cols, bool per_class_codes,
                              const in_t* __restrict__ anchors, bool shared_anchors,
                              const int64_t* __restrict__ image_sizes, coding::DecodeParams<acc_t> p, acc_t min_size,
                              bool nms_by_level, acc_t* __restrict__ boxes, double* __restrict__ key,
                              int64_t* __restrict__ group) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < nimg * k;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t img = e / k, q = e % k;
    const double v = static_cast<double>(val[e]);
    const int64_t f = flat[e], a = f / nc, c = f % nc;
    group[e] = nms_by_level ? col_level[q] * nc + c : c;
    if (!(v > -INFINITY)) {
      key[e] = -INFINITY;
      continue;
    }
    coding::DecodeParams<acc_t> pi = p;
    pi.img_h = static_cast<acc_t>(image_sizes[2 * img]);
    pi.img_w = static_cast<acc_t>(image_sizes[2 * img + 1]);
    const in_t* code = codes + (img * na + a) * code_cols + (per_class_codes ? 4 * c : 0);
    const in_t* anchor = anchors + (shared_anchors ? 0 : img * na * 4) + 4 * a;
    const bool ok = postprocess::decode_candidate<in_t, acc_t>(anchor, code, pi, min_size, boxes + 4 * e);
    key[e] = ok ? v : -INFINITY;
  }
}

template <typename in_t, typename score_t, typename acc_t>
__global__ void nms_kernel(const acc_t* __restrict__ boxes, const double* __restrict__ key,
                           const int64_t* __restrict__ group, const int64_t* __restrict__ order,
                           const int64_t* __restrict__ flat, int64_t k, int64_t nc, int64_t max_det, acc_t iou_thr,
                           int64_t* __restrict__ kept_group, in_t* __restrict__ out_boxes,
                           score_t* __restrict__ out_scores, int64_t* __restrict__ out_labels,
                           int64_t* __restrict__ out_counts) {
  const int64_t img = blockIdx.x;
  const acc_t* bx = boxes + img * k * 4;
  in_t* ob = out_boxes + img * max_det * 4;
  int64_t* kg = kept_group + img * max_det;
  int64_t kept = 0;
  for (int64_t q = 0; q < k && kept < max_det; ++q) {
    const int64_t i = order[img * k + q];
    const double v = key[img * k + i];
    if (!(v > -INFINITY)) break;  // every later candidate was rejected too
    const acc_t* b = bx + 4 * i;
    const int64_t g = group[img * k + i];
    const acc_t area = box_area_xyxy(b[0], b[1], b[2], b[3]);
    bool sup = false;
    for (int64_t j = threadIdx.x; j < kept && !sup; j += blockDim.x) {
      if (kg[j] != g) continue;
      const acc_t o0 = static_cast<acc_t>(ob[4 * j]), o1 = static_cast<acc_t>(ob[4 * j + 1]);
      const acc_t o2 = static_cast<acc_t>(ob[4 * j + 2]), o3 = static_cast<acc_t>(ob[4 * j + 3]);
      const acc_t iou = iou_with_areas(o0, o1, o2, o3, box_area_xyxy(o0, o1, o2, o3), b[0], b[1], b[2], b[3], area);
      if (iou > iou_thr) sup = true;
    }
    if (__syncthreads_or(sup)) continue;
    if (threadIdx.x == 0) {
      for (int j = 0; j < 4; ++j) ob[4 * kept + j] = static_cast<in_t>(b[j]);
      kg[kept] = g;
      out_scores[img * max_det + kept] = static_cast<score_t>(v);
      out_labels[img * max_det + kept] = flat[img * k + i] % nc;
    }
    __syncthreads();  // the new kept box is visible to every thread
    ++kept;
  }
  if (threadIdx.x == 0) out_counts[img] = kept;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> detection_postprocess_cuda(
    const at::Tensor& scores, const at::Tensor& codes, const at::Tensor& anchors, at::IntArrayRef level_sizes,
    at::IntArrayRef image_sizes, double score_thresh, int64_t topk_per_level, double nms_thresh, int64_t max_det,
    at::ArrayRef<double> weights, double bbox_xform_clip, double min_size, bool nms_by_level,
    int64_t topk_per_class) {
  check_detection_postprocess_args(scores, codes, anchors, level_sizes, image_sizes, score_thresh, topk_per_level,
                                   nms_thresh, max_det, weights, bbox_xform_clip, min_size, topk_per_class);
  const c10::cuda::CUDAGuard guard(scores.device());
  const std::vector<int64_t> levels = detection_level_sizes(scores, level_sizes);
  const int64_t nimg = scores.size(0), na = scores.size(1), nc = scores.size(2);
  const bool per_class_codes = codes.size(2) == 4 * nc && nc != 1;
  at::Tensor out_boxes = at::zeros({nimg, max_det, 4}, codes.options());
  at::Tensor out_scores = at::zeros({nimg, max_det}, scores.options());
  at::Tensor out_labels = at::full({nimg, max_det}, -1, scores.options().dtype(at::kLong));
  at::Tensor out_counts = at::zeros({nimg}, scores.options().dtype(at::kLong));
  if (nimg == 0 || max_det == 0 || na == 0 || nc == 0) return {out_boxes, out_scores, out_labels, out_counts};

  // 1. per level: threshold and top-k (device ops only).
  std::vector<at::Tensor> vals, flats, col_levels;
  int64_t start = 0;
  for (int64_t l = 0; l < static_cast<int64_t>(levels.size()); ++l) {
    const int64_t pairs = levels[l] * nc;
    const int64_t cap = topk_per_level >= 0 ? std::min(topk_per_level, pairs) : pairs;
    if (cap > 0) {
      const at::Tensor sl = scores.narrow(1, start, levels[l]).reshape({nimg, pairs});
      const at::Tensor neg_inf = at::full({}, -std::numeric_limits<double>::infinity(), sl.options());
      at::Tensor masked = at::where(sl > score_thresh, sl, neg_inf);
      if (topk_per_class >= 0 && topk_per_class < levels[l]) {
        // rank the anchors of each (image, class) column: ties by the lower anchor (stable sort)
        const at::Tensor cols = masked.view({nimg, levels[l], nc});
        const at::Tensor rank = std::get<1>(at::sort(cols, /*stable=*/true, /*dim=*/1, /*descending=*/true));
        const at::Tensor drop = rank.narrow(1, topk_per_class, levels[l] - topk_per_class);
        masked = cols.scatter(1, drop, -std::numeric_limits<double>::infinity()).view({nimg, pairs});
      }
      auto sorted = at::sort(masked, /*stable=*/true, /*dim=*/1, /*descending=*/true);
      vals.push_back(std::get<0>(sorted).narrow(1, 0, cap));
      flats.push_back(std::get<1>(sorted).narrow(1, 0, cap) + start * nc);
      col_levels.push_back(at::full({cap}, l, out_counts.options()));
    }
    start += levels[l];
  }
  if (vals.empty()) return {out_boxes, out_scores, out_labels, out_counts};
  const at::Tensor val = at::cat(vals, 1).contiguous();
  const at::Tensor flat = at::cat(flats, 1).contiguous();
  const at::Tensor col_level = at::cat(col_levels, 0).contiguous();
  const int64_t k = val.size(1);

  // The image sizes: one asynchronous copy from pinned memory.
  const at::Tensor sizes_host = at::tensor(image_sizes.vec(), at::TensorOptions().dtype(at::kLong)).pin_memory();
  const at::Tensor sizes = sizes_host.to(scores.device(), /*non_blocking=*/true);

  const at::Tensor cd = codes.contiguous();
  const at::Tensor an = anchors.to(codes.scalar_type()).contiguous();
  const auto acc_type = accumulate_type_of(codes.scalar_type());
  at::Tensor cand_boxes = at::empty({nimg, k, 4}, codes.options().dtype(acc_type));
  at::Tensor key = at::empty({nimg, k}, codes.options().dtype(at::kDouble));
  at::Tensor group = at::empty({nimg, k}, out_counts.options());
  at::Tensor kept_group = at::empty({nimg, max_det}, out_counts.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, codes.scalar_type(), "detection_postprocess_cuda", [&] {
    using in_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "detection_postprocess_cuda_s", [&] {
      using score_t = scalar_t;
      AT_DISPATCH_FLOATING_TYPES(acc_type, "detection_postprocess_cuda_acc", [&] {
        using acc_t = scalar_t;
        const auto p = make_decode_params<acc_t>(weights, bbox_xform_clip, at::IntArrayRef(image_sizes.data(), 2));
        decode_kernel<in_t, score_t, acc_t><<<blocks_for(nimg * k, kThreads), kThreads, 0, stream>>>(
            flat.data_ptr<int64_t>(), val.data_ptr<score_t>(), col_level.data_ptr<int64_t>(), nimg, k, na, nc,
            cd.data_ptr<in_t>(), cd.size(2), per_class_codes, an.data_ptr<in_t>(), anchors.dim() == 2,
            sizes.data_ptr<int64_t>(), p, static_cast<acc_t>(static_cast<in_t>(min_size)), nms_by_level,
            cand_boxes.data_ptr<acc_t>(), key.data_ptr<double>(), group.data_ptr<int64_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        const at::Tensor order = std::get<1>(at::sort(key, /*stable=*/true, /*dim=*/1, /*descending=*/true)).contiguous();
        nms_kernel<in_t, score_t, acc_t><<<static_cast<unsigned int>(nimg), kThreads, 0, stream>>>(
            cand_boxes.data_ptr<acc_t>(), key.data_ptr<double>(), group.data_ptr<int64_t>(),
            order.data_ptr<int64_t>(), flat.data_ptr<int64_t>(), k, nc, max_det, threshold_for<acc_t>(nms_thresh),
            kept_group.data_ptr<int64_t>(), out_boxes.data_ptr<in_t>(), out_scores.data_ptr<score_t>(),
            out_labels.data_ptr<int64_t>(), out_counts.data_ptr<int64_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
  return {out_boxes, out_scores, out_labels, out_counts};
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CUDA, m) {
  m.impl("detection_postprocess", &pydetops::detection_postprocess_cuda);
}
