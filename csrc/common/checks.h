// Argument checks shared by every backend. They raise ValueError (shapes,
// values) or TypeError (dtypes) in Python, always naming the argument, so that
// bad input never reaches a kernel.
#pragma once
#include <ATen/ATen.h>

namespace pydetops {

inline void check_box_tensor(const at::Tensor& t, const char* name, int64_t cols = 4) {
  TORCH_CHECK_VALUE(t.dim() == 2 && t.size(1) == cols, name, " must be a Tensor[N, ", cols,
                    "], got shape ", t.sizes());
}

inline void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), name,
                   " must be a floating-point tensor (float16, bfloat16, float32, float64), got ",
                   t.scalar_type());
}

inline void check_real(const at::Tensor& t, const char* name) {
  const auto st = t.scalar_type();
  TORCH_CHECK_TYPE((at::isFloatingType(st) || at::isIntegralType(st, /*includeBool=*/false)),
                   name, " must be a real (floating-point or integer) tensor, got ", st);
}

inline void check_same_device(const at::Tensor& a, const char* a_name, const at::Tensor& b,
                              const char* b_name) {
  TORCH_CHECK_VALUE(a.device() == b.device(), a_name, " and ", b_name,
                    " must be on the same device, got ", a.device(), " and ", b.device());
}

inline void check_finite_scalar(double v, const char* name) {
  TORCH_CHECK_VALUE(std::isfinite(v), name, " must be finite, got ", v);
}

inline void check_non_negative(double v, const char* name) {
  TORCH_CHECK_VALUE(std::isfinite(v) && v >= 0, name, " must be a finite number >= 0, got ", v);
}

// The type in which a kernel computes: float64 stays float64, every other
// dtype (float32, float16, bfloat16, integers) computes in float32.
inline at::ScalarType accumulate_type_of(at::ScalarType st) {
  return st == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace pydetops
