// Schemas of spp_pool (SPPNet's spatial pyramid pooling of RoIs: Fast R-CNN
// max RoI pooling at several grid sizes, concatenated) and its backward.
#include "ops/spp_pool.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <limits>

#include "common/checks.h"
#include "ops/psroi_spp_common.h"

namespace pydetops {

int64_t check_spp_args(const at::Tensor& input, const at::Tensor& rois, at::IntArrayRef levels,
                       double spatial_scale) {
  check_roi_op_input(input);
  check_roi_op_rois(rois, input);
  check_roi_op_spatial_scale(spatial_scale);
  TORCH_CHECK_VALUE(!levels.empty(), "levels must hold at least one pyramid level");
  int64_t cells = 0;
  for (const int64_t l : levels) {
    TORCH_CHECK_VALUE(l > 0 && l <= 4096, "levels must be positive grid sizes (at most 4096), got ", levels);
    cells += l * l;
  }
  TORCH_CHECK_VALUE(input.size(2) * input.size(3) <= std::numeric_limits<int32_t>::max(),
                    "input: H * W must fit in int32 (argmax), got ", input.size(2), " x ", input.size(3));
  // output (input's dtype) and argmax (int32)
  check_result_size(static_cast<double>(rois.size(0)) * static_cast<double>(input.size(1)) * static_cast<double>(cells),
                    input.element_size() + 4, "levels");
  return cells;
}

std::tuple<at::Tensor, at::Tensor> spp_pool(const at::Tensor& input, const at::Tensor& rois, at::IntArrayRef levels,
                                            double spatial_scale) {
  static auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("pydetops::spp_pool", "").typed<decltype(spp_pool)>();
  return op.call(input, rois, levels, spatial_scale);
}

at::Tensor spp_pool_backward(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax,
                             at::IntArrayRef levels, c10::SymInt batch_size, c10::SymInt channels,
                             c10::SymInt height, c10::SymInt width) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pydetops::_spp_pool_backward", "")
                       .typed<decltype(spp_pool_backward)>();
  return op.call(grad, rois, argmax, levels, std::move(batch_size), std::move(channels), std::move(height),
                 std::move(width));
}

}  // namespace pydetops

TORCH_LIBRARY_FRAGMENT(pydetops, m) {
  m.set_python_module("pydetops.ops.psroi_spp");
  m.def("spp_pool(Tensor input, Tensor rois, int[] levels, float spatial_scale) -> (Tensor, Tensor)");
  m.def("_spp_pool_backward(Tensor grad, Tensor rois, Tensor argmax, int[] levels, SymInt batch_size, "
        "SymInt channels, SymInt height, SymInt width) -> Tensor");
}
