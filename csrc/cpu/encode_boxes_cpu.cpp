// CPU kernels of encode_boxes and its backward: one box pair per iteration,
// split over threads in blocks of kBlockPairs, each output written once. The forward's
// loop is branch-free (log is vecmath's), so GCC vectorises it, in an AVX2 clone too.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>

#include "common/box_coding.h"
#include "common/checks.h"
#include "cpu/vec_math_cpu.h"
#include "ops/encode_boxes.h"

namespace pydetops {
namespace {

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(PYDETOPS_NO_TARGET_CLONES)
// flatten: decode_box_math / encode_box inlined into each clone (else GCC may keep a call
// to a default-target copy in the hot loop: ~50 ns per box instead of ~3).
#define PYDETOPS_CODING_CLONES __attribute__((target_clones("avx2", "default"), flatten))
#elif defined(__GNUC__)
#define PYDETOPS_CODING_CLONES __attribute__((flatten))
#else
#define PYDETOPS_CODING_CLONES
#endif

// Box pairs per parallel task (less runs in the calling thread: a parallel region
// costs more than this much work).
constexpr int64_t kBlockPairs = 8192;

template <typename io_t, typename acc_t>
PYDETOPS_CODING_CLONES void encode_range(const io_t* __restrict rp, const io_t* __restrict qp, io_t* __restrict o,
                                         int64_t begin, int64_t end, coding::EncodeWeights<acc_t> wt) {
  if constexpr (std::is_same<io_t, acc_t>::value) {  // in place: vectorises in the AVX2 clone too
    for (int64_t i = begin; i < end; ++i) coding::encode_box<acc_t, vecmath::CpuMath>(rp + 4 * i, qp + 4 * i, wt, o + 4 * i);
    return;
  }
  for (int64_t i = begin; i < end; ++i) {
    acc_t a[4], b[4], t[4];
    for (int j = 0; j < 4; ++j) {
      a[j] = static_cast<acc_t>(rp[4 * i + j]);
      b[j] = static_cast<acc_t>(qp[4 * i + j]);
    }
    coding::encode_box<acc_t, vecmath::CpuMath>(a, b, wt, t);
    for (int j = 0; j < 4; ++j) o[4 * i + j] = static_cast<io_t>(t[j]);
  }
}

template <typename T>
coding::EncodeWeights<T> weights_as(const std::array<double, 4>& w) {
  return {static_cast<T>(w[0]), static_cast<T>(w[1]), static_cast<T>(w[2]), static_cast<T>(w[3])};
}

at::Tensor encode_boxes_cpu(const at::Tensor& reference_boxes, const at::Tensor& proposals,
                            const at::Tensor& weights) {
  check_encode_boxes_args(reference_boxes, proposals, weights);
  const auto out_type = encode_boxes_result_type(reference_boxes, proposals);
  const auto wv = encode_weights_values(weights);
  const int64_t n = reference_boxes.size(0);
  at::Tensor out = at::empty({n, 4}, reference_boxes.options().dtype(out_type));
  if (n == 0) return out;
  // Same-dtype float inputs are read in place (no copy when contiguous).
  const at::Tensor r = reference_boxes.to(out_type).contiguous();
  const at::Tensor q = proposals.to(out_type).contiguous();
  const auto acc_type = accumulate_type_of(out_type);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_type, "encode_boxes_cpu", [&] {
    using io_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(acc_type, "encode_boxes_cpu_acc", [&] {
      using acc_t = scalar_t;
      const auto wt = weights_as<acc_t>(wv);
      const io_t* rp = r.data_ptr<io_t>();
      const io_t* qp = q.data_ptr<io_t>();
      io_t* o = out.data_ptr<io_t>();
      at::parallel_for(0, n, kBlockPairs,
                       [&](int64_t begin, int64_t end) { encode_range<io_t, acc_t>(rp, qp, o, begin, end, wt); });
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> encode_boxes_backward_cpu(const at::Tensor& grad,
                                                             const at::Tensor& reference_boxes,
                                                             const at::Tensor& proposals, const at::Tensor& weights) {
  check_encode_boxes_args(reference_boxes, proposals, weights);
  const int64_t n = reference_boxes.size(0);
  TORCH_CHECK_VALUE(grad.dim() == 2 && grad.size(0) == n && grad.size(1) == 4,
                    "grad must have the shape of encode_boxes' output [", n, ", 4], got ", grad.sizes());
  const auto out_type = encode_boxes_result_type(reference_boxes, proposals);
  const auto acc_type = accumulate_type_of(out_type);
  const auto wv = encode_weights_values(weights);
  at::Tensor grad_r = at::empty({n, 4}, reference_boxes.options().dtype(acc_type));
  at::Tensor grad_q = at::empty({n, 4}, reference_boxes.options().dtype(acc_type));
  if (n > 0) {
    const at::Tensor r = reference_boxes.to(out_type).to(acc_type).contiguous();
    const at::Tensor q = proposals.to(out_type).to(acc_type).contiguous();
    const at::Tensor g = grad.to(acc_type).contiguous();
    AT_DISPATCH_FLOATING_TYPES(acc_type, "encode_boxes_backward_cpu", [&] {
      using acc_t = scalar_t;
      const auto wt = weights_as<acc_t>(wv);
      const acc_t* rp = r.data_ptr<acc_t>();
      const acc_t* qp = q.data_ptr<acc_t>();
      const acc_t* gp = g.data_ptr<acc_t>();
      acc_t* gr = grad_r.data_ptr<acc_t>();
      acc_t* gq = grad_q.data_ptr<acc_t>();
      at::parallel_for(0, n, 2048, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          coding::encode_box_backward<acc_t>(rp + 4 * i, qp + 4 * i, wt, gp + 4 * i, gr + 4 * i, gq + 4 * i);
        }
      });
    });
  }
  auto grad_type = [&](const at::Tensor& t) { return t.is_floating_point() ? t.scalar_type() : acc_type; };
  return {grad_r.to(grad_type(reference_boxes)), grad_q.to(grad_type(proposals))};
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CPU, m) {
  m.impl("encode_boxes", &pydetops::encode_boxes_cpu);
  m.impl("_encode_boxes_backward", &pydetops::encode_boxes_backward_cpu);
}
