// Argument checks shared by ps_roi_align, ps_roi_pool and spp_pool (all backends).
#include "ops/psroi_spp_common.h"

#include <cmath>

#include "common/checks.h"

namespace pydetops {

void check_roi_op_input(const at::Tensor& input) {
  TORCH_CHECK_VALUE(input.dim() == 4, "input must be a Tensor[N, C, H, W], got shape ", input.sizes());
  check_floating(input, "input");
}

void check_roi_op_rois(const at::Tensor& rois, const at::Tensor& input) {
  TORCH_CHECK_VALUE(rois.dim() == 2 && rois.size(1) == 5,
                    "boxes must be a Tensor[K, 5] (batch index, x1, y1, x2, y2) or a list of Tensor[L, 4], got shape ",
                    rois.sizes());
  check_floating(rois, "boxes");
  check_same_device(input, "input", rois, "boxes");
}

void check_roi_op_spatial_scale(double spatial_scale) {
  TORCH_CHECK_VALUE(std::isfinite(spatial_scale) && spatial_scale > 0,
                    "spatial_scale must be a finite number > 0, got ", spatial_scale);
}

// The one batch-index check of every RoI op (roi_align, roi_pool, the
// multi-level and position-sensitive ops, spp_pool): each boxes[:, 0] must be
// an integer naming an image of the batch. On CUDA this costs one reduction and
// one small device-to-host copy; a clear error is worth it (an index out of
// range would otherwise read outside the input).
void check_roi_batch_indices(const at::Tensor& rois, int64_t batch_size) {
  if (rois.size(0) == 0) return;
  const at::Tensor idx = rois.select(1, 0).to(at::kDouble);
  int64_t bad_row = -1;
  double bad_value = 0;
  if (idx.is_cpu()) {
    const at::Tensor c = idx.contiguous();
    const double* p = c.data_ptr<double>();
    for (int64_t i = 0; i < c.numel(); ++i) {
      const double v = p[i];
      if (!(std::isfinite(v) && v == std::floor(v) && v >= 0 && v < static_cast<double>(batch_size))) {
        bad_row = i;
        bad_value = v;
        break;
      }
    }
  } else {
    const at::Tensor bad = (~at::isfinite(idx)) | (idx != idx.floor()) | (idx < 0) | (idx >= static_cast<double>(batch_size));
    if (bad.any().item<bool>()) {
      bad_row = bad.nonzero().select(1, 0)[0].item<int64_t>();
      bad_value = idx[bad_row].item<double>();
    }
  }
  TORCH_CHECK_VALUE(bad_row < 0, "boxes[:, 0] (batch index) must hold integers in [0, ", batch_size,
                    ") for an input of batch size ", batch_size, ", got ", bad_value, " in row ", bad_row);
}

void check_roi_op_grad(const at::Tensor& grad, at::IntArrayRef expected, const char* op) {
  TORCH_CHECK_VALUE(grad.sizes() == expected, op, ": grad must have the shape of the output ", expected, ", got ",
                    grad.sizes());
  check_floating(grad, "grad");
}

}  // namespace pydetops
