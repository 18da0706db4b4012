// Schema of paste_masks (Mask R-CNN: per-RoI mask probabilities pasted into
// the image) and its argument checks. Not differentiable (inference only).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "common/checks.h"
#include "ops/paste_keypoints.h"

namespace pydetops {

void check_paste_masks_args(const at::Tensor& masks, const at::Tensor& boxes, int64_t image_height,
                            int64_t image_width, int64_t padding) {
  TORCH_CHECK_VALUE(masks.dim() == 4 && masks.size(1) == 1, "masks must be a Tensor[N, 1, M, M], got shape ",
                    masks.sizes());
  check_floating(masks, "masks");
  check_box_tensor(boxes, "boxes");
  check_floating(boxes, "boxes");
  TORCH_CHECK_VALUE(masks.size(0) == boxes.size(0), "masks and boxes must have the same length N, got masks ",
                    masks.sizes(), " and boxes ", boxes.sizes());
  check_same_device(masks, "masks", boxes, "boxes");
  TORCH_CHECK_VALUE(masks.size(0) == 0 || (masks.size(2) > 0 && masks.size(3) > 0),
                    "masks must have a non-empty M x M mask per box, got shape ", masks.sizes());
  TORCH_CHECK_VALUE(image_height >= 0 && image_width >= 0, "image_size must be (H, W) with H, W >= 0, got (",
                    image_height, ", ", image_width, ")");
  TORCH_CHECK_VALUE(padding >= 0 && padding <= (int64_t(1) << 30), "padding must be an int in [0, 2^30], got ",
                    padding);
  const int64_t plane = checked_mul(image_height, image_width, "image_size");
  checked_mul(masks.size(0), plane, "image_size");
  check_result_size(static_cast<double>(masks.size(0)) * static_cast<double>(plane),
                    static_cast<int64_t>(masks.element_size()), "image_size");
}

at::Tensor paste_masks(const at::Tensor& masks, const at::Tensor& boxes, int64_t image_height, int64_t image_width,
                       int64_t padding) {
  static auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("pydetops::paste_masks", "").typed<decltype(paste_masks)>();
  return op.call(masks, boxes, image_height, image_width, padding);
}

}  // namespace pydetops

TORCH_LIBRARY_FRAGMENT(pydetops, m) {
  m.set_python_module("pydetops.ops.paste_keypoints");  // where the fake kernels are registered
  m.def("paste_masks(Tensor masks, Tensor boxes, int image_height, int image_width, int padding=1) -> Tensor");
}
