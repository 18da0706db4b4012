// Autograd of nearest_unpool2d and bed_of_nails_unpool2d: both linear, so the
// backward needs only the scale.
#include <torch/autograd.h>
#include <torch/library.h>

#include "ops/scale_unpool2d.h"

namespace pydetops {
namespace {

template <bool kNearest>
class ScaleUnpool2dFunction : public torch::autograd::Function<ScaleUnpool2dFunction<kNearest>> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                            at::IntArrayRef scale_factor) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["scale_factor"] = scale_factor.vec();
    return kNearest ? pydetops::nearest_unpool2d(input, scale_factor) : pydetops::bed_of_nails_unpool2d(input, scale_factor);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto scale = ctx->saved_data["scale_factor"].toIntVector();
    at::Tensor g = kNearest ? pydetops::nearest_unpool2d_backward(grad_outputs[0], scale)
                            : pydetops::bed_of_nails_unpool2d_backward(grad_outputs[0], scale);
    return {g, at::Tensor()};
  }
};

at::Tensor nearest_unpool2d_autograd(const at::Tensor& input, at::IntArrayRef scale_factor) {
  return ScaleUnpool2dFunction<true>::apply(input, scale_factor);
}

at::Tensor bed_of_nails_unpool2d_autograd(const at::Tensor& input, at::IntArrayRef scale_factor) {
  return ScaleUnpool2dFunction<false>::apply(input, scale_factor);
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, Autograd, m) {
  m.impl("nearest_unpool2d", &pydetops::nearest_unpool2d_autograd);
  m.impl("bed_of_nails_unpool2d", &pydetops::bed_of_nails_unpool2d_autograd);
}
