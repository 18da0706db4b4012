// Autograd of ps_roi_pool: saves the RoIs and the input's sizes (not the input).
#include <torch/autograd.h>
#include <torch/library.h>

#include "ops/ps_roi_pool.h"

namespace pydetops {
namespace {

class PSRoIPoolFunction : public torch::autograd::Function<PSRoIPoolFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input, const at::Tensor& rois,
                            double spatial_scale, int64_t pooled_height, int64_t pooled_width) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({rois});
    ctx->saved_data["spatial_scale"] = spatial_scale;
    ctx->saved_data["pooled_height"] = pooled_height;
    ctx->saved_data["pooled_width"] = pooled_width;
    const auto sizes = input.sym_sizes();
    ctx->saved_data["batch_size"] = sizes[0];
    ctx->saved_data["channels"] = sizes[1];
    ctx->saved_data["height"] = sizes[2];
    ctx->saved_data["width"] = sizes[3];
    return ps_roi_pool(input, rois, spatial_scale, pooled_height, pooled_width);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    auto& d = ctx->saved_data;
    at::Tensor grad_input = ps_roi_pool_backward(
        grad_outputs[0], saved[0], d["spatial_scale"].toDouble(), d["pooled_height"].toInt(),
        d["pooled_width"].toInt(), d["batch_size"].toSymInt(), d["channels"].toSymInt(), d["height"].toSymInt(),
        d["width"].toSymInt());
    return {grad_input, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor ps_roi_pool_autograd(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                int64_t pooled_height, int64_t pooled_width) {
  return PSRoIPoolFunction::apply(input, rois, spatial_scale, pooled_height, pooled_width);
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, Autograd, m) {
  m.impl("ps_roi_pool", &pydetops::ps_roi_pool_autograd);
}
