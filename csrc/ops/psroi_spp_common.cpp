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

void check_roi_batch_indices(const at::Tensor& rois, int64_t batch_size) {
  if (rois.size(0) == 0) return;
  const at::Tensor idx = rois.select(1, 0).to(at::kDouble);
  bool ok;
  if (idx.is_cpu()) {
    const at::Tensor c = idx.contiguous();
    const double* p = c.data_ptr<double>();
    ok = true;
    for (int64_t i = 0; i < c.numel() && ok; ++i) {
      const double t = std::trunc(p[i]);
      ok = std::isfinite(t) && t >= 0 && t < static_cast<double>(batch_size);
    }
  } else {
    const at::Tensor t = idx.trunc();
    ok = !((~at::isfinite(t)) | (t < 0) | (t >= static_cast<double>(batch_size))).any().item<bool>();
  }
  TORCH_CHECK_VALUE(ok, "boxes: every batch index (boxes[:, 0]) must be in [0, ", batch_size,
                    ") for an input of batch size ", batch_size);
}

void check_roi_op_grad(const at::Tensor& grad, at::IntArrayRef expected, const char* op) {
  TORCH_CHECK_VALUE(grad.sizes() == expected, op, ": grad must have the shape of the output ", expected, ", got ",
                    grad.sizes());
  check_floating(grad, "grad");
}

}  // namespace pydetops
