// Autograd of box_overlaps: saves both box sets, backward recomputes each pair.
#include <torch/autograd.h>
#include <torch/library.h>

#include "ops/box_overlaps.h"

namespace pydetops {
namespace {

class BoxOverlapsFunction : public torch::autograd::Function<BoxOverlapsFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& boxes1,
                            const at::Tensor& boxes2, c10::string_view mode, bool aligned, double eps) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({boxes1, boxes2});
    ctx->saved_data["mode"] = std::string(mode);
    ctx->saved_data["aligned"] = aligned;
    ctx->saved_data["eps"] = eps;
    return box_overlaps(boxes1, boxes2, mode, aligned, eps);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    auto grads = box_overlaps_backward(grad_outputs[0], saved[0], saved[1], ctx->saved_data["mode"].toStringRef(),
                                       ctx->saved_data["aligned"].toBool(), ctx->saved_data["eps"].toDouble());
    return {std::get<0>(grads), std::get<1>(grads), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor box_overlaps_autograd(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view mode,
                                 bool aligned, double eps) {
  return BoxOverlapsFunction::apply(boxes1, boxes2, mode, aligned, eps);
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, Autograd, m) {
  m.impl("box_overlaps", &pydetops::box_overlaps_autograd);
}
