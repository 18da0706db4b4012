// Argument checks shared by every backend. They raise ValueError (shapes,
// values) or TypeError (dtypes) in Python, always naming the argument, so that
// bad input never reaches a kernel.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/safe_numerics.h>

#include <cstdint>
#include <limits>
#if !defined(_WIN32)
#include <unistd.h>
#endif

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

// ---- sizes computed from arguments ----------------------------------------
// Every size an op derives from its arguments (output extents, products of
// scale factors, strides, dilations, paddings, pooled_h * pooled_w, ...) goes
// through these before anything is allocated or looped over: an overflow of
// int64 is a ValueError naming the argument, never a wrapped size.

// a * b for a, b >= 0; ValueError naming `name` when it does not fit in int64.
inline int64_t checked_mul(int64_t a, int64_t b, const char* name) {
  int64_t r = 0;
  TORCH_CHECK_VALUE(a >= 0 && b >= 0 && !c10::mul_overflows(a, b, &r), name, " is too large: ", a, " * ", b,
                    " overflows int64");
  return r;
}

// a + b (any signs); ValueError naming `name` on overflow.
inline int64_t checked_add(int64_t a, int64_t b, const char* name) {
  int64_t r = 0;
  TORCH_CHECK_VALUE(!c10::add_overflows(a, b, &r), name, " is too large: ", a, " + ", b, " overflows int64");
  return r;
}

// Physical memory of this machine in bytes (0 when unknown).
inline uint64_t physical_memory_bytes() {
#if defined(_SC_PHYS_PAGES) && defined(_SC_PAGESIZE)
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0) return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page);
#endif
  return 0;
}

// A result (or scratch) of `numel` elements of `elem_bytes` bytes each that
// `name` implies: ValueError naming the argument when it cannot fit in int64
// bytes or exceeds the machine's physical memory (which no allocator could
// serve), instead of the allocator's message that names no argument.
// `numel` is a double so that callers may pass products that would overflow.
inline void check_result_size(double numel, int64_t elem_bytes, const char* name) {
  const double bytes = numel * static_cast<double>(elem_bytes);
  TORCH_CHECK_VALUE(bytes < 9.0e18, name, " is too large: the result would hold ", numel,
                    " elements, more than int64 can address");
  const uint64_t mem = physical_memory_bytes();
  TORCH_CHECK_VALUE(mem == 0 || bytes <= static_cast<double>(mem), name, " is too large: the result would need ",
                    bytes / 1073741824.0, " GiB (", numel, " elements), more than this machine's ",
                    static_cast<double>(mem) / 1073741824.0, " GiB of memory");
}

// Samples per bin side that roi_align, ps_roi_align and multi_level_roi_align
// accept for a fixed sampling_ratio (documented in the Python docstrings):
// 64 x 64 = 4096 samples per bin. Larger values would run for minutes on one
// RoI and (in the deterministic backwards) allocate per-sample scratch.
constexpr int64_t kMaxSamplingRatio = 64;

inline void check_sampling_ratio(int64_t sampling_ratio) {
  TORCH_CHECK_VALUE(sampling_ratio <= kMaxSamplingRatio, "sampling_ratio must be <= ", kMaxSamplingRatio,
                    " (samples per bin side; <= 0 picks them adaptively), got ", sampling_ratio);
}

// pooled_height * pooled_width, both > 0 (checked before), named "output_size".
inline int64_t checked_output_cells(int64_t pooled_height, int64_t pooled_width) {
  TORCH_CHECK_VALUE(pooled_height > 0 && pooled_width > 0, "output_size must be positive, got (", pooled_height,
                    ", ", pooled_width, ")");
  return checked_mul(pooled_height, pooled_width, "output_size");
}

}  // namespace pydetops
