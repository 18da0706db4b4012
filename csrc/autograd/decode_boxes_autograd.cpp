// Autograd of decode_boxes: saves the codes and the boxes; the backward op
// recomputes each (box, class) pair. weights, clamp and image_size are constants.
#include <torch/autograd.h>
#include <torch/library.h>

#include "ops/decode_boxes.h"

namespace pydetops {
namespace {

class DecodeBoxesFunction : public torch::autograd::Function<DecodeBoxesFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& rel_codes,
                            const at::Tensor& boxes, at::ArrayRef<double> weights, double clamp,
                            at::OptionalIntArrayRef image_size) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({rel_codes, boxes});
    ctx->saved_data["weights"] = weights.vec();
    ctx->saved_data["clamp"] = clamp;
    ctx->saved_data["clip"] = image_size.has_value();
    ctx->saved_data["image_size"] = image_size.has_value() ? image_size->vec() : std::vector<int64_t>{};
    return decode_boxes(rel_codes, boxes, weights, clamp, image_size);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto weights = ctx->saved_data["weights"].toDoubleVector();
    const auto image_size = ctx->saved_data["image_size"].toIntVector();
    at::OptionalIntArrayRef size = ctx->saved_data["clip"].toBool() ? at::OptionalIntArrayRef(image_size)
                                                                     : at::OptionalIntArrayRef(std::nullopt);
    auto grads = decode_boxes_backward(grad_outputs[0], saved[0], saved[1], weights,
                                       ctx->saved_data["clamp"].toDouble(), size);
    at::Tensor grad_boxes = saved[1].is_floating_point() ? std::get<1>(grads) : at::Tensor();
    return {std::get<0>(grads), grad_boxes, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor decode_boxes_autograd(const at::Tensor& rel_codes, const at::Tensor& boxes, at::ArrayRef<double> weights,
                                 double clamp, at::OptionalIntArrayRef image_size) {
  return DecodeBoxesFunction::apply(rel_codes, boxes, weights, clamp, image_size);
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, Autograd, m) {
  m.impl("decode_boxes", &pydetops::decode_boxes_autograd);
}
