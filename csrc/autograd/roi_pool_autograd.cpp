// Autograd of roi_pool: the gradient of each bin goes to its argmax pixel;
// argmax (the second output) is not differentiable.
#include <torch/autograd.h>
#include <torch/library.h>

#include "ops/roi_align.h"
#include "ops/roi_pool.h"

namespace pydetops {
namespace {

class RoIPoolFunction : public torch::autograd::Function<RoIPoolFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                                                const at::Tensor& boxes, double spatial_scale,
                                                int64_t pooled_height, int64_t pooled_width) {
    at::AutoDispatchBelowADInplaceOrView guard;
    check_roi_feature(input, "input");  // before reading its sizes
    auto result = roi_pool(input, boxes, spatial_scale, pooled_height, pooled_width);
    at::Tensor output = std::get<0>(result), argmax = std::get<1>(result);
    ctx->save_for_backward({boxes, argmax});
    ctx->mark_non_differentiable({argmax});
    ctx->saved_data["spatial_scale"] = spatial_scale;
    ctx->saved_data["pooled_height"] = pooled_height;
    ctx->saved_data["pooled_width"] = pooled_width;
    ctx->saved_data["n"] = input.sym_size(0);
    ctx->saved_data["c"] = input.sym_size(1);
    ctx->saved_data["h"] = input.sym_size(2);
    ctx->saved_data["w"] = input.sym_size(3);
    return {output, argmax};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    auto& d = ctx->saved_data;
    at::Tensor grad_input = roi_pool_backward(grad_outputs[0], saved[0], saved[1], d["spatial_scale"].toDouble(),
                                              d["pooled_height"].toInt(), d["pooled_width"].toInt(),
                                              d["n"].toSymInt(), d["c"].toSymInt(), d["h"].toSymInt(),
                                              d["w"].toSymInt());
    return {grad_input, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> roi_pool_autograd(const at::Tensor& input, const at::Tensor& boxes,
                                                     double spatial_scale, int64_t pooled_height,
                                                     int64_t pooled_width) {
  auto r = RoIPoolFunction::apply(input, boxes, spatial_scale, pooled_height, pooled_width);
  return {r[0], r[1]};
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, Autograd, m) {
  m.impl("roi_pool", &pydetops::roi_pool_autograd);
}
