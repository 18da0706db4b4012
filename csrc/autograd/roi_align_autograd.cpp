// Autograd of roi_align: gradient for input only (boxes get none, as in
// torchvision); the backward needs the boxes and the input's shape.
#include <torch/autograd.h>
#include <torch/library.h>

#include "ops/roi_align.h"

namespace pydetops {
namespace {

class RoIAlignFunction : public torch::autograd::Function<RoIAlignFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input, const at::Tensor& boxes,
                            double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                            int64_t sampling_ratio, bool aligned) {
    at::AutoDispatchBelowADInplaceOrView guard;
    check_roi_feature(input, "input");  // before reading its sizes
    ctx->save_for_backward({boxes});
    ctx->saved_data["spatial_scale"] = spatial_scale;
    ctx->saved_data["pooled_height"] = pooled_height;
    ctx->saved_data["pooled_width"] = pooled_width;
    ctx->saved_data["sampling_ratio"] = sampling_ratio;
    ctx->saved_data["aligned"] = aligned;
    ctx->saved_data["n"] = input.sym_size(0);
    ctx->saved_data["c"] = input.sym_size(1);
    ctx->saved_data["h"] = input.sym_size(2);
    ctx->saved_data["w"] = input.sym_size(3);
    return roi_align(input, boxes, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    auto& d = ctx->saved_data;
    at::Tensor grad_input = roi_align_backward(
        grad_outputs[0], saved[0], d["spatial_scale"].toDouble(), d["pooled_height"].toInt(),
        d["pooled_width"].toInt(), d["n"].toSymInt(), d["c"].toSymInt(), d["h"].toSymInt(), d["w"].toSymInt(),
        d["sampling_ratio"].toInt(), d["aligned"].toBool());
    return {grad_input, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor roi_align_autograd(const at::Tensor& input, const at::Tensor& boxes, double spatial_scale,
                              int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  return RoIAlignFunction::apply(input, boxes, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned);
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, Autograd, m) {
  m.impl("roi_align", &pydetops::roi_align_autograd);
}
