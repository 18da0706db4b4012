// Schema of detection_postprocess: a detector's whole post-processing for a
// batch of B images in one call, per image:
//   per level: candidates (anchor, class) with score > score_thresh -> the
//   with topk_per_class >= 0 the topk_per_class best of each class -> the
//   topk_per_level best (decreasing score, ties: lower anchor * C + class) ->
//   decode (BoxCoder weights, bbox_xform_clip) -> clip to the image -> drop
//   boxes narrower or lower than min_size; then over all levels: NMS within each
//   class (or each (level, class) with nms_by_level) -> the max_det best by score.
// The output has a fixed shape (B x max_det, plus the count per image), so a
// CUDA caller needs no host synchronisation. Not differentiable.
#include "ops/detection_postprocess.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "common/checks.h"

namespace pydetops {

void check_detection_postprocess_args(const at::Tensor& scores, const at::Tensor& codes, const at::Tensor& anchors,
                                      at::IntArrayRef level_sizes, at::IntArrayRef image_sizes, double score_thresh,
                                      int64_t topk_per_level, double nms_thresh, int64_t max_det,
                                      at::ArrayRef<double> weights, double bbox_xform_clip, double min_size,
                                      int64_t topk_per_class) {
  TORCH_CHECK_VALUE(scores.dim() == 3, "scores must be a Tensor[B, A, C] (image, anchor, class), got shape ",
                    scores.sizes());
  check_floating(scores, "scores");
  const int64_t b = scores.size(0), a = scores.size(1), c = scores.size(2);
  TORCH_CHECK_VALUE(codes.dim() == 3 && codes.size(0) == b && codes.size(1) == a &&
                        (codes.size(2) == 4 || codes.size(2) == 4 * c),
                    "codes must be a Tensor[B, A, 4] (class-agnostic) or Tensor[B, A, 4 * C] (per class) for scores of "
                    "shape ", scores.sizes(), ", got shape ", codes.sizes());
  check_floating(codes, "codes");
  TORCH_CHECK_VALUE((anchors.dim() == 2 && anchors.size(0) == a && anchors.size(1) == 4) ||
                        (anchors.dim() == 3 && anchors.size(0) == b && anchors.size(1) == a && anchors.size(2) == 4),
                    "anchors must be a Tensor[A, 4] (shared by the images) or Tensor[B, A, 4] with A = ", a,
                    " and B = ", b, ", got shape ", anchors.sizes());
  check_real(anchors, "anchors");
  check_same_device(scores, "scores", codes, "codes");
  check_same_device(scores, "scores", anchors, "anchors");
  if (!level_sizes.empty()) {
    int64_t total = 0;
    for (int64_t s : level_sizes) {
      TORCH_CHECK_VALUE(s >= 0, "level_sizes must be >= 0, got ", level_sizes);
      total += s;
    }
    TORCH_CHECK_VALUE(total == a, "level_sizes must add up to the number of anchors A = ", a, ", got ", level_sizes);
  }
  TORCH_CHECK_VALUE(static_cast<int64_t>(image_sizes.size()) == 2 * b,
                    "image_sizes must hold (height, width) for each of the ", b, " images (", 2 * b,
                    " numbers), got ", image_sizes.size());
  for (int64_t s : image_sizes) TORCH_CHECK_VALUE(s >= 0, "image_sizes must be >= 0, got ", image_sizes);
  TORCH_CHECK_VALUE(!std::isnan(score_thresh), "score_thresh must not be NaN");
  TORCH_CHECK_VALUE(!std::isnan(nms_thresh) && nms_thresh >= 0, "nms_thresh must be a number >= 0, got ", nms_thresh);
  TORCH_CHECK_VALUE(max_det >= 0, "max_det must be >= 0, got ", max_det);
  TORCH_CHECK_VALUE(weights.size() == 4, "weights must be 4 numbers (wx, wy, ww, wh), got ", weights.size());
  for (double v : weights) {
    TORCH_CHECK_VALUE(std::isfinite(v) && v != 0.0, "weights must be finite and non-zero, got ", weights);
  }
  TORCH_CHECK_VALUE(!std::isnan(bbox_xform_clip), "bbox_xform_clip must not be NaN");
  TORCH_CHECK_VALUE(!std::isnan(min_size), "min_size must not be NaN");
  (void)topk_per_level;  // any value: negative keeps every candidate
  (void)topk_per_class;  // any value: negative means no per-class cap
  TORCH_CHECK_VALUE(a * c < (int64_t(1) << 62), "scores has too many (anchor, class) pairs per image");
}

std::vector<int64_t> detection_level_sizes(const at::Tensor& scores, at::IntArrayRef level_sizes) {
  if (level_sizes.empty()) return {scores.size(1)};
  return level_sizes.vec();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> detection_postprocess(
    const at::Tensor& scores, const at::Tensor& codes, const at::Tensor& anchors, at::IntArrayRef level_sizes,
    at::IntArrayRef image_sizes, double score_thresh, int64_t topk_per_level, double nms_thresh, int64_t max_det,
    at::ArrayRef<double> weights, double bbox_xform_clip, double min_size, bool nms_by_level,
    int64_t topk_per_class) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pydetops::detection_postprocess", "")
                       .typed<decltype(detection_postprocess)>();
  return op.call(scores, codes, anchors, level_sizes, image_sizes, score_thresh, topk_per_level, nms_thresh, max_det,
                 weights, bbox_xform_clip, min_size, nms_by_level, topk_per_class);
}

}  // namespace pydetops

TORCH_LIBRARY_FRAGMENT(pydetops, m) {
  m.set_python_module("pydetops.ops.detection");  // where the fake kernels are registered
  m.def(
      "detection_postprocess(Tensor scores, Tensor codes, Tensor anchors, int[] level_sizes, int[] image_sizes, "
      "float score_thresh=0.05, int topk_per_level=1000, float nms_thresh=0.5, int max_det=100, "
      "float[4] weights=[1.0, 1.0, 1.0, 1.0], float bbox_xform_clip=4.135166556742356, float min_size=0.0, "
      "bool nms_by_level=False, int topk_per_class=-1) -> (Tensor, Tensor, Tensor, Tensor)");
}
