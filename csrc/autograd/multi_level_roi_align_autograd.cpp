// Autograd of multi_level_roi_align: one gradient per feature map, computed by
// one backward call; boxes and levels get none.
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>

#include "ops/multi_level_roi_align.h"
#include "ops/roi_align.h"

namespace pydetops {
namespace {

class MultiLevelRoIAlignFunction : public torch::autograd::Function<MultiLevelRoIAlignFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, at::TensorList features, const at::Tensor& boxes,
                            const at::Tensor& levels, at::ArrayRef<double> spatial_scales, int64_t pooled_height,
                            int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
    at::AutoDispatchBelowADInplaceOrView guard;
    for (const auto& f : features) check_roi_feature(f, "features");  // before reading their sizes
    ctx->save_for_backward({boxes, levels});
    ctx->saved_data["spatial_scales"] = std::vector<double>(spatial_scales.begin(), spatial_scales.end());
    ctx->saved_data["pooled_height"] = pooled_height;
    ctx->saved_data["pooled_width"] = pooled_width;
    ctx->saved_data["sampling_ratio"] = sampling_ratio;
    ctx->saved_data["aligned"] = aligned;
    ctx->saved_data["num_levels"] = static_cast<int64_t>(features.size());
    if (!features.empty()) {
      ctx->saved_data["n"] = features[0].sym_size(0);
      ctx->saved_data["c"] = features[0].sym_size(1);
    }
    for (size_t l = 0; l < features.size(); ++l) {
      ctx->saved_data["h" + std::to_string(l)] = features[l].sym_size(2);
      ctx->saved_data["w" + std::to_string(l)] = features[l].sym_size(3);
    }
    return multi_level_roi_align(features, boxes, levels, spatial_scales, pooled_height, pooled_width,
                                 sampling_ratio, aligned);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    auto& d = ctx->saved_data;
    const int64_t L = d["num_levels"].toInt();
    std::vector<c10::SymInt> heights, widths;
    for (int64_t l = 0; l < L; ++l) {
      heights.push_back(d["h" + std::to_string(l)].toSymInt());
      widths.push_back(d["w" + std::to_string(l)].toSymInt());
    }
    const std::vector<double> scales = d["spatial_scales"].toDoubleVector();
    std::vector<at::Tensor> grads = multi_level_roi_align_backward(
        grad_outputs[0], saved[0], saved[1], scales, d["pooled_height"].toInt(), d["pooled_width"].toInt(),
        d["sampling_ratio"].toInt(), d["aligned"].toBool(), d["n"].toSymInt(), d["c"].toSymInt(), heights, widths);
    torch::autograd::variable_list result(grads.begin(), grads.end());
    for (int i = 0; i < 7; ++i) result.emplace_back();  // boxes, levels, and the five non-tensor arguments
    return result;
  }
};

at::Tensor multi_level_roi_align_autograd(at::TensorList features, const at::Tensor& boxes, const at::Tensor& levels,
                                          at::ArrayRef<double> spatial_scales, int64_t pooled_height,
                                          int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  return MultiLevelRoIAlignFunction::apply(features, boxes, levels, spatial_scales, pooled_height, pooled_width,
                                           sampling_ratio, aligned);
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, Autograd, m) {
  m.impl("multi_level_roi_align", &pydetops::multi_level_roi_align_autograd);
}
