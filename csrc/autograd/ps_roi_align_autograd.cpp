// Autograd of ps_roi_align: saves the RoIs and the input's sizes (not the input).
#include <torch/autograd.h>
#include <torch/library.h>

#include "ops/ps_roi_align.h"

namespace pydetops {
namespace {

class PSRoIAlignFunction : public torch::autograd::Function<PSRoIAlignFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input, const at::Tensor& rois,
                            double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                            int64_t sampling_ratio) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({rois});
    ctx->saved_data["spatial_scale"] = spatial_scale;
    ctx->saved_data["pooled_height"] = pooled_height;
    ctx->saved_data["pooled_width"] = pooled_width;
    ctx->saved_data["sampling_ratio"] = sampling_ratio;
    const auto sizes = input.sym_sizes();
    ctx->saved_data["batch_size"] = sizes[0];
    ctx->saved_data["channels"] = sizes[1];
    ctx->saved_data["height"] = sizes[2];
    ctx->saved_data["width"] = sizes[3];
    return ps_roi_align(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    auto& d = ctx->saved_data;
    at::Tensor grad_input = ps_roi_align_backward(
        grad_outputs[0], saved[0], d["spatial_scale"].toDouble(), d["pooled_height"].toInt(),
        d["pooled_width"].toInt(), d["sampling_ratio"].toInt(), d["batch_size"].toSymInt(), d["channels"].toSymInt(),
        d["height"].toSymInt(), d["width"].toSymInt());
    return {grad_input, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor ps_roi_align_autograd(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                 int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio) {
  return PSRoIAlignFunction::apply(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio);
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, Autograd, m) {
  m.impl("ps_roi_align", &pydetops::ps_roi_align_autograd);
}
