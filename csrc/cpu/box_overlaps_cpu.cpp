// CPU kernels of box_overlaps and its backward.
//
// Matrix form: the per-box terms of boxes2 (corners, area, centre, atan(w/h))
// are computed once into rows, so the inner loop over boxes2 reads contiguous
// streams and writes one contiguous output row: branch-free, so the compiler
// vectorises it (AVX2 where the CPU has it). Rows are split over threads with
// at::parallel_for. The output (N x M) is the only N x M memory.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "common/checks.h"
#include "ops/box_overlaps.h"

namespace pydetops {
namespace {

// GCC on x86-64: also compile the hot row loop for AVX2 and pick the version at
// load time (ifunc), so one wheel runs everywhere and uses 8-wide float vectors
// where the CPU has them. No FMA in either version (-ffp-contract=off, and the
// "avx2" target does not enable FMA), so both give bit-identical results.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(PYDETOPS_NO_TARGET_CLONES)
#define PYDETOPS_TARGET_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define PYDETOPS_TARGET_CLONES
#endif

// Rows of per-box terms of boxes2 ([kTermRows, M], unit stride along M), so that
// the inner loop reads contiguous streams and writes one contiguous output row:
// branch-free, so the compiler vectorises it.
constexpr int kTermRows = 8;  // x1, y1, x2, y2, area, cx, cy, angle

// Work below this many boxes/pairs runs in the calling thread, as torch's own
// element-wise ops do (at::internal::GRAIN_SIZE): a parallel region costs more
// than the work, and on a busy machine its barrier can wait a whole time slice
// for a descheduled thread (measured: 20-100 ms for 0.1 ms of work).
constexpr int64_t kPairGrain = 32768;

// The terms of box i. CIoU's atan(w/h) comes precomputed (angles, see
// box_angles), everything else is computed here as box_terms does.
template <OverlapMode kMode, typename acc_t>
inline BoxTerms<acc_t> terms_of(const acc_t* boxes, const acc_t* angles, int64_t i) {
  const acc_t* p = boxes + 4 * i;
  BoxTerms<acc_t> t = box_terms<OverlapMode::DIoU, acc_t>(p[0], p[1], p[2], p[3]);  // all but the angle
  if (kMode == OverlapMode::CIoU) t.angle = angles[i];
  return t;
}

// atan(w / h) of every box for CIoU, with torch's vectorised atan (the very
// values torch.atan gives torchvision): one atan per box instead of two scalar
// ones per pair. Undefined for the other modes.
at::Tensor box_angles(const at::Tensor& boxes, OverlapMode mode) {
  if (mode != OverlapMode::CIoU) return at::Tensor();
  return at::atan((boxes.select(1, 2) - boxes.select(1, 0)) / (boxes.select(1, 3) - boxes.select(1, 1))).contiguous();
}

template <typename acc_t>
const acc_t* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<acc_t>() : nullptr;
}

template <OverlapMode kMode, typename acc_t>
void box_term_rows(const acc_t* boxes, const acc_t* angles, int64_t m, acc_t* rows) {
  at::parallel_for(0, m, kPairGrain, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const BoxTerms<acc_t> t = terms_of<kMode, acc_t>(boxes, angles, j);
      rows[j] = t.x1; rows[m + j] = t.y1; rows[2 * m + j] = t.x2; rows[3 * m + j] = t.y2;
      rows[4 * m + j] = t.area; rows[5 * m + j] = t.cx; rows[6 * m + j] = t.cy; rows[7 * m + j] = t.angle;
    }
  });
}

// One output row: box a against every box of the term rows.
template <OverlapMode kMode, typename acc_t>
PYDETOPS_TARGET_CLONES void overlap_row(BoxTerms<acc_t> a, const acc_t* __restrict rows, int64_t m, acc_t eps,
                                        acc_t* __restrict out) {
  const acc_t* __restrict bx1 = rows;
  const acc_t* __restrict by1 = rows + m;
  const acc_t* __restrict bx2 = rows + 2 * m;
  const acc_t* __restrict by2 = rows + 3 * m;
  const acc_t* __restrict barea = rows + 4 * m;
  const acc_t* __restrict bcx = rows + 5 * m;
  const acc_t* __restrict bcy = rows + 6 * m;
  const acc_t* __restrict bangle = rows + 7 * m;
  for (int64_t j = 0; j < m; ++j) {
    BoxTerms<acc_t> b;
    b.x1 = bx1[j]; b.y1 = by1[j]; b.x2 = bx2[j]; b.y2 = by2[j];
    b.area = barea[j];
    b.cx = bcx[j]; b.cy = bcy[j];
    b.angle = bangle[j];
    out[j] = box_overlap_terms<kMode, false, acc_t>(a, b, eps);
  }
}

template <OverlapMode kMode, typename acc_t>
void overlap_matrix(const acc_t* a, const acc_t* ang_a, const acc_t* b, const acc_t* ang_b, int64_t n, int64_t m,
                    acc_t eps, acc_t* out) {
  std::vector<acc_t> rows(static_cast<size_t>(kTermRows) * m);
  box_term_rows<kMode, acc_t>(b, ang_b, m, rows.data());
  // ~64k pairs per task at least: enough work to amortise the task, small
  // enough to balance the threads.
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(m, 1));
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      overlap_row<kMode, acc_t>(terms_of<kMode, acc_t>(a, ang_a, i), rows.data(), m, eps, out + i * m);
    }
  });
}

template <OverlapMode kMode, typename acc_t>
void overlap_aligned(const acc_t* a, const acc_t* ang_a, const acc_t* b, const acc_t* ang_b, int64_t n, acc_t eps,
                     acc_t* out) {
  at::parallel_for(0, n, kPairGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      out[i] = box_overlap_terms<kMode, true, acc_t>(terms_of<kMode, acc_t>(a, ang_a, i),
                                                     terms_of<kMode, acc_t>(b, ang_b, i), eps);
    }
  });
}

template <typename F>
void dispatch_mode(OverlapMode mode, F&& f) {
  switch (mode) {
    case OverlapMode::IoU: f(std::integral_constant<OverlapMode, OverlapMode::IoU>{}); break;
    case OverlapMode::IoF: f(std::integral_constant<OverlapMode, OverlapMode::IoF>{}); break;
    case OverlapMode::GIoU: f(std::integral_constant<OverlapMode, OverlapMode::GIoU>{}); break;
    case OverlapMode::DIoU: f(std::integral_constant<OverlapMode, OverlapMode::DIoU>{}); break;
    case OverlapMode::CIoU: f(std::integral_constant<OverlapMode, OverlapMode::CIoU>{}); break;
  }
}

at::Tensor box_overlaps_cpu(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view mode_name,
                            bool aligned, double eps) {
  check_box_overlaps_args(boxes1, boxes2, aligned, eps);
  const OverlapMode mode = parse_overlap_mode(mode_name);
  const auto acc_type = box_overlaps_compute_type(boxes1.scalar_type());
  const auto out_type = box_overlaps_result_type(boxes1.scalar_type(), aligned);
  const int64_t n = boxes1.size(0), m = boxes2.size(0);
  at::Tensor out = at::empty(aligned ? at::IntArrayRef{n} : at::IntArrayRef{n, m}, boxes1.options().dtype(acc_type));
  if (out.numel() == 0) return out.to(out_type);
  const at::Tensor a = boxes1.to(acc_type).contiguous();

  AT_DISPATCH_FLOATING_TYPES(acc_type, "box_overlaps_cpu", [&] {
    using acc_t = scalar_t;
    const acc_t e = static_cast<acc_t>(eps);
    dispatch_mode(mode, [&](auto mode_tag) {
      constexpr OverlapMode kMode = decltype(mode_tag)::value;
      // The output is always in the accumulate type (float32 or float64).
      const at::Tensor b = boxes2.to(acc_type).contiguous();
      const at::Tensor ang_a = box_angles(a, mode), ang_b = box_angles(b, mode);
      if (aligned) {
        overlap_aligned<kMode, acc_t>(a.data_ptr<acc_t>(), data_or_null<acc_t>(ang_a), b.data_ptr<acc_t>(),
                                      data_or_null<acc_t>(ang_b), n, e, out.data_ptr<acc_t>());
      } else {
        overlap_matrix<kMode, acc_t>(a.data_ptr<acc_t>(), data_or_null<acc_t>(ang_a), b.data_ptr<acc_t>(),
                                     data_or_null<acc_t>(ang_b), n, m, e, out.data_ptr<acc_t>());
      }
    });
  });
  return out.to(out_type);  // no-op unless integer boxes were computed in float64
}

// Backward of the matrix form without races and bit-identical for any thread
// count: rows are cut into fixed chunks; each chunk writes its own rows of
// grad1 and its own partial sums of grad2, and the partials are summed in
// chunk order afterwards.
template <OverlapMode kMode, typename acc_t>
void overlap_matrix_backward(const acc_t* g, const acc_t* a, const acc_t* b, int64_t n, int64_t m, acc_t eps,
                             acc_t* grad_a, acc_t* grad_b) {
  constexpr int64_t kRowsPerChunk = 64;
  const int64_t chunks = (n + kRowsPerChunk - 1) / kRowsPerChunk;
  std::vector<acc_t> partial(static_cast<size_t>(chunks) * m * 4, acc_t(0));
  // At least ~kPairGrain / 2 pairs per task. The chunks, not the threads, fix
  // the summation order, so this does not change the result.
  const int64_t chunk_grain = std::max<int64_t>(1, kPairGrain / 2 / std::max<int64_t>(kRowsPerChunk * m, 1));
  at::parallel_for(0, chunks, chunk_grain, [&](int64_t c_begin, int64_t c_end) {
    for (int64_t c = c_begin; c < c_end; ++c) {
      acc_t* gb_part = partial.data() + c * m * 4;
      for (int64_t i = c * kRowsPerChunk; i < std::min(n, (c + 1) * kRowsPerChunk); ++i) {
        acc_t ga[4] = {0, 0, 0, 0};
        for (int64_t j = 0; j < m; ++j) {
          const acc_t gij = g[i * m + j];
          if (gij == acc_t(0)) continue;
          box_overlap_backward<kMode, false, acc_t>(a + 4 * i, b + 4 * j, eps, gij, ga, gb_part + 4 * j);
        }
        for (int k = 0; k < 4; ++k) grad_a[4 * i + k] = ga[k];
      }
    }
  });
  at::parallel_for(0, m, kPairGrain / 8, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      acc_t s[4] = {0, 0, 0, 0};
      for (int64_t c = 0; c < chunks; ++c)
        for (int k = 0; k < 4; ++k) s[k] += partial[(c * m + j) * 4 + k];
      for (int k = 0; k < 4; ++k) grad_b[4 * j + k] = s[k];
    }
  });
}

template <OverlapMode kMode, typename acc_t>
void overlap_aligned_backward(const acc_t* g, const acc_t* a, const acc_t* b, int64_t n, acc_t eps, acc_t* grad_a,
                              acc_t* grad_b) {
  at::parallel_for(0, n, kPairGrain / 4, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      acc_t ga[4] = {0, 0, 0, 0}, gb[4] = {0, 0, 0, 0};
      box_overlap_backward<kMode, true, acc_t>(a + 4 * i, b + 4 * i, eps, g[i], ga, gb);
      for (int k = 0; k < 4; ++k) {
        grad_a[4 * i + k] = ga[k];
        grad_b[4 * i + k] = gb[k];
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> box_overlaps_backward_cpu(const at::Tensor& grad, const at::Tensor& boxes1,
                                                             const at::Tensor& boxes2, c10::string_view mode_name,
                                                             bool aligned, double eps) {
  check_box_overlaps_args(boxes1, boxes2, aligned, eps);
  const OverlapMode mode = parse_overlap_mode(mode_name);
  const int64_t n = boxes1.size(0), m = boxes2.size(0);
  TORCH_CHECK_VALUE(aligned ? grad.numel() == n : (grad.dim() == 2 && grad.size(0) == n && grad.size(1) == m),
                    "grad must have the shape of box_overlaps' output, got ", grad.sizes());
  const auto acc_type = accumulate_type_of(boxes1.scalar_type());
  const at::Tensor a = boxes1.to(acc_type).contiguous();
  const at::Tensor b = boxes2.to(acc_type).contiguous();
  const at::Tensor g = grad.to(acc_type).contiguous();
  at::Tensor grad_a = at::zeros({n, 4}, a.options());
  at::Tensor grad_b = at::zeros({m, 4}, a.options());
  if (n > 0 && m > 0) {
    AT_DISPATCH_FLOATING_TYPES(acc_type, "box_overlaps_backward_cpu", [&] {
      using acc_t = scalar_t;
      const acc_t e = static_cast<acc_t>(eps);
      dispatch_mode(mode, [&](auto mode_tag) {
        constexpr OverlapMode kMode = decltype(mode_tag)::value;
        if (aligned) {
          overlap_aligned_backward<kMode, acc_t>(g.data_ptr<acc_t>(), a.data_ptr<acc_t>(), b.data_ptr<acc_t>(), n, e,
                                                 grad_a.data_ptr<acc_t>(), grad_b.data_ptr<acc_t>());
        } else {
          overlap_matrix_backward<kMode, acc_t>(g.data_ptr<acc_t>(), a.data_ptr<acc_t>(), b.data_ptr<acc_t>(), n, m,
                                                e, grad_a.data_ptr<acc_t>(), grad_b.data_ptr<acc_t>());
        }
      });
    });
  }
  return {grad_a.to(boxes1.scalar_type()), grad_b.to(boxes2.scalar_type())};
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CPU, m) {
  m.impl("box_overlaps", &pydetops::box_overlaps_cpu);
  m.impl("_box_overlaps_backward", &pydetops::box_overlaps_backward_cpu);
}
