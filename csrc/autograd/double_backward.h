// Double backward guard for the `_*_backward` ops whose own backward pydetops
// does not implement. Without an Autograd kernel, a backward op called under
// create_graph=True would run through torch's autograd fallback and give
// second derivatives of 0 / None with only a warning (silently wrong). Here
// its result gets a grad_fn that raises instead, as torchvision does for its
// RoI ops. First derivatives (create_graph=False) are unaffected.
#pragma once
#include <torch/autograd.h>

#include <string>
#include <vector>

namespace pydetops {

class NoDoubleBackward : public torch::autograd::Function<NoDoubleBackward> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const std::string& op,
                                                const at::Tensor& grad, torch::autograd::variable_list results) {
    ctx->saved_data["op"] = op;
    return results;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list /*grads*/) {
    TORCH_CHECK(false, "double backward of pydetops.", ctx->saved_data["op"].toStringRef(),
                " is not supported: its backward is computed by a kernel without a derivative (differentiate the "
                "loss once, or use torch.autograd.grad without create_graph=True)");
    return {};
  }
};

// `results` must have been computed below autograd (AutoDispatchBelowADInplaceOrView).
// When `grad` takes part in a graph (create_graph=True), the defined results
// are tied to it by a node that raises when differentiated.
inline std::vector<at::Tensor> guard_double_backward(const char* op, const at::Tensor& grad,
                                                     std::vector<at::Tensor> results) {
  if (!(at::GradMode::is_enabled() && grad.requires_grad())) return results;
  std::vector<size_t> where;
  torch::autograd::variable_list defined;
  for (size_t i = 0; i < results.size(); ++i) {
    if (results[i].defined() && torch::autograd::isDifferentiableType(results[i].scalar_type())) {
      where.push_back(i);
      defined.push_back(results[i]);
    }
  }
  if (defined.empty()) return results;
  torch::autograd::variable_list tied = NoDoubleBackward::apply(std::string(op), grad, std::move(defined));
  for (size_t k = 0; k < where.size(); ++k) results[where[k]] = tied[k];
  return results;
}

}  // namespace pydetops
