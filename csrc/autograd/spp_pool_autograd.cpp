// Autograd of spp_pool: saves the RoIs, the argmax and the input's sizes; the
// argmax output is not differentiable.
#include <torch/autograd.h>
#include <torch/library.h>

#include "ops/spp_pool.h"

namespace pydetops {
namespace {

class SppPoolFunction : public torch::autograd::Function<SppPoolFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                                                const at::Tensor& rois, at::IntArrayRef levels,
                                                double spatial_scale) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto result = spp_pool(input, rois, levels, spatial_scale);
    const at::Tensor& argmax = std::get<1>(result);
    ctx->save_for_backward({rois, argmax});
    ctx->saved_data["levels"] = levels.vec();
    const auto sizes = input.sym_sizes();
    ctx->saved_data["batch_size"] = sizes[0];
    ctx->saved_data["channels"] = sizes[1];
    ctx->saved_data["height"] = sizes[2];
    ctx->saved_data["width"] = sizes[3];
    ctx->mark_non_differentiable({argmax});
    return {std::get<0>(result), argmax};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    auto& d = ctx->saved_data;
    const std::vector<int64_t> levels = d["levels"].toIntVector();
    at::Tensor grad_input = spp_pool_backward(grad_outputs[0], saved[0], saved[1], levels,
                                              d["batch_size"].toSymInt(), d["channels"].toSymInt(),
                                              d["height"].toSymInt(), d["width"].toSymInt());
    return {grad_input, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> spp_pool_autograd(const at::Tensor& input, const at::Tensor& rois,
                                                     at::IntArrayRef levels, double spatial_scale) {
  auto out = SppPoolFunction::apply(input, rois, levels, spatial_scale);
  return {out[0], out[1]};
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, Autograd, m) {
  m.impl("spp_pool", &pydetops::spp_pool_autograd);
}
