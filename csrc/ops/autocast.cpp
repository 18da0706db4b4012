// Autocast kernels: inside a torch.autocast region these ops run in float32, and their
// floating outputs come back in the dtype of the first tensor argument, as torchvision's
// autocast kernels do for nms / roi_align / roi_pool / ps_roi_*. A detector in a
// float16/bfloat16 region can then pass half features with float32 boxes (or half boxes
// with float32 scores) without casting by hand, and box geometry is not done in half.
//
// One boxed kernel serves every op: it walks the arguments, casts each floating tensor
// (and tensor list) with at::autocast::cached_cast (float64 and non-floating tensors and
// tensors on another device are left alone), runs the op below the autocast key, then
// casts the floating outputs back. Integer outputs (nms indices, argmax) are untouched.
// The detection heads' ops (matching, focal loss, post-processing) keep their float32
// outputs, as torch's own float32 autocast ops do: a loss or a box in bfloat16 would lose
// its low bits (2 px at x = 500) for nothing.
#include <ATen/autocast_mode.h>
#include <torch/library.h>

#include <optional>
#include <vector>

namespace pydetops {
namespace {

template <c10::DispatchKey kAutocastKey, c10::DeviceType kDevice, bool kCastBack>
void run_in_float32(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const c10::FunctionSchema& schema = op.schema();
  const size_t first_arg = stack->size() - schema.arguments().size();
  std::optional<at::ScalarType> result_dtype;  // the first tensor argument's dtype
  auto cast = [&](const at::Tensor& t) {
    if (!result_dtype && t.defined()) result_dtype = t.scalar_type();
    return at::autocast::cached_cast(at::kFloat, t, kDevice);
  };
  for (size_t i = first_arg; i < stack->size(); ++i) {
    c10::IValue& arg = (*stack)[i];
    if (arg.isTensor()) {
      arg = cast(arg.toTensor());
    } else if (arg.isTensorList()) {
      std::vector<at::Tensor> tensors = arg.toTensorVector();
      for (at::Tensor& t : tensors) t = cast(t);
      arg = c10::IValue(tensors);
    }
  }
  {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(kAutocastKey);
    op.callBoxed(stack);
  }
  if (!kCastBack || !result_dtype) return;
  const size_t first_result = stack->size() - schema.returns().size();
  for (size_t i = first_result; i < stack->size(); ++i) {
    c10::IValue& result = (*stack)[i];
    if (!result.isTensor()) continue;
    const at::Tensor t = result.toTensor();
    if (t.defined() && at::isFloatingType(t.scalar_type()) && t.scalar_type() != *result_dtype)
      result = t.to(*result_dtype);
  }
}

// The ops torchvision has autocast kernels for, and their pydetops relatives.
constexpr const char* kFloat32Ops[] = {
    "nms",           "batched_nms",  "soft_nms",     "box_overlaps",          "roi_align", "roi_pool",
    "ps_roi_align",  "ps_roi_pool",  "spp_pool",     "multi_level_roi_align", "encode_boxes",
    "decode_boxes",
    // Runs in float32 and returns the input's dtype: its weight is float32 under autocast
    // while its input is the previous layer's half output (torch's own ConvTranspose2d runs
    // in half instead; ours has no half CPU kernel worth using).
    "conv_transpose2d",
};

// Float32 in, float32 out.
constexpr const char* kFloat32OutputOps[] = {"match_boxes", "sigmoid_focal_loss", "detection_postprocess"};

template <c10::DispatchKey kAutocastKey, c10::DeviceType kDevice>
void register_float32_ops(torch::Library& m) {
  for (const char* name : kFloat32Ops)
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&run_in_float32<kAutocastKey, kDevice, true>>());
  for (const char* name : kFloat32OutputOps)
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&run_in_float32<kAutocastKey, kDevice, false>>());
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, AutocastCPU, m) {
  pydetops::register_float32_ops<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>(m);
}

TORCH_LIBRARY_IMPL(pydetops, AutocastCUDA, m) {
  pydetops::register_float32_ops<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>(m);
}
