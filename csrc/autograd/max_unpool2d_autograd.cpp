// Autograd of max_unpool2d: saves indices; the backward is a gather (see the CPU kernel).
#include <torch/autograd.h>
#include <torch/library.h>

#include "ops/max_unpool2d.h"

namespace pydetops {
namespace {

class MaxUnpool2dFunction : public torch::autograd::Function<MaxUnpool2dFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input, const at::Tensor& indices,
                            at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                            at::OptionalIntArrayRef output_size) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({indices});
    return pydetops::max_unpool2d(input, indices, kernel_size, stride, padding, output_size);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    return {pydetops::max_unpool2d_backward(grad_outputs[0], saved[0]), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

at::Tensor max_unpool2d_autograd(const at::Tensor& input, const at::Tensor& indices, at::IntArrayRef kernel_size,
                                 at::IntArrayRef stride, at::IntArrayRef padding,
                                 at::OptionalIntArrayRef output_size) {
  return MaxUnpool2dFunction::apply(input, indices, kernel_size, stride, padding, output_size);
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, Autograd, m) {
  m.impl("max_unpool2d", &pydetops::max_unpool2d_autograd);
}
