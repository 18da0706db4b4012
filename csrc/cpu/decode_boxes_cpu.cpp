// CPU kernels of decode_boxes and its backward. Reads the codes in their dtype
// (float16/bfloat16 converted per element to float32). The forward runs over blocks of
// rows (about kBlockPairs (box, class) pairs per task); each row's box is read once and
// its K codes decoded in a branch-free loop (the clip is a compile-time choice and exp
// is vecmath's), which GCC vectorises, in an AVX2 clone too where the CPU has it.
// Each output is written once. The backward parallelises over boxes, so the K class
// gradients of a box are summed in class order by one thread: bit-identical for any
// thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>

#include "common/checks.h"
#include "cpu/vec_math_cpu.h"
#include "ops/decode_boxes.h"

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

// (box, class) pairs per parallel task: below this the work runs in the calling thread
// (a parallel region costs more than ~8k pairs of work, as at::internal::GRAIN_SIZE).
constexpr int64_t kBlockPairs = 8192;

// Rows [begin, end) of the forward. One row: box bx[4 row..], codes c[4 k row..].
template <typename in_t, typename acc_t, bool Clip>
PYDETOPS_CODING_CLONES void decode_rows(const in_t* __restrict c, const in_t* __restrict bx, in_t* __restrict o,
                                        int64_t begin, int64_t end, int64_t k, coding::DecodeParams<acc_t> p) {
  if (k == 1) {  // one code per box: one flat loop over the boxes (vectorised over boxes)
    if constexpr (std::is_same<in_t, acc_t>::value) {
      // In place: the local copies below keep GCC's loop vectoriser off this loop.
      for (int64_t i = begin; i < end; ++i) {
        coding::decode_box_math<acc_t, vecmath::CpuMath>(bx + 4 * i, c + 4 * i, p, Clip, o + 4 * i);
      }
      return;
    }
    for (int64_t i = begin; i < end; ++i) {
      acc_t box[4], d[4], r[4];
      for (int j = 0; j < 4; ++j) {
        box[j] = static_cast<acc_t>(bx[4 * i + j]);
        d[j] = static_cast<acc_t>(c[4 * i + j]);
      }
      coding::decode_box_math<acc_t, vecmath::CpuMath>(box, d, p, Clip, r);
      for (int j = 0; j < 4; ++j) o[4 * i + j] = static_cast<in_t>(r[j]);
    }
    return;
  }
  if constexpr (std::is_same<in_t, acc_t>::value) {
    if (k < 16) {
      // Few classes: a vector loop over the K classes of a row would run mostly in its scalar
      // tail, so copy each row's box once per class into a small buffer and run the pairs
      // through the flat (vectorised) loop, kChunk pairs at a time.
      constexpr int64_t kChunk = 1024;
      alignas(64) acc_t rep[4 * kChunk];
      const int64_t rows_per_chunk = kChunk / k;
      for (int64_t r0 = begin; r0 < end; r0 += rows_per_chunk) {
        const int64_t r1 = std::min(end, r0 + rows_per_chunk);
        int64_t q = 0;
        for (int64_t row = r0; row < r1; ++row) {
          for (int64_t cls = 0; cls < k; ++cls, ++q) {
            for (int j = 0; j < 4; ++j) rep[4 * q + j] = bx[4 * row + j];
          }
        }
        const in_t* cc = c + 4 * k * r0;
        in_t* oo = o + 4 * k * r0;
        for (int64_t i = 0; i < q; ++i) {
          coding::decode_box_math<acc_t, vecmath::CpuMath>(rep + 4 * i, cc + 4 * i, p, Clip, oo + 4 * i);
        }
      }
      return;
    }
  }
  for (int64_t row = begin; row < end; ++row) {  // vectorised over the K classes of a row
    acc_t box[4];
    for (int j = 0; j < 4; ++j) box[j] = static_cast<acc_t>(bx[4 * row + j]);
    const in_t* cr = c + 4 * k * row;
    in_t* orow = o + 4 * k * row;
    for (int64_t cls = 0; cls < k; ++cls) {
      acc_t d[4], r[4];
      for (int j = 0; j < 4; ++j) d[j] = static_cast<acc_t>(cr[4 * cls + j]);
      coding::decode_box_math<acc_t, vecmath::CpuMath>(box, d, p, Clip, r);
      for (int j = 0; j < 4; ++j) orow[4 * cls + j] = static_cast<in_t>(r[j]);
    }
  }
}

at::Tensor decode_boxes_cpu(const at::Tensor& rel_codes, const at::Tensor& boxes, at::ArrayRef<double> weights,
                            double clamp, at::OptionalIntArrayRef image_size) {
  check_decode_boxes_args(rel_codes, boxes, weights, clamp, image_size);
  const int64_t n = rel_codes.size(0), k = rel_codes.size(1) / 4;
  at::Tensor out = at::empty({n, 4 * k}, rel_codes.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const at::Tensor codes = rel_codes.contiguous();
  // torchvision casts the boxes to the codes' dtype first (boxes.to(rel_codes.dtype)).
  const at::Tensor b = boxes.to(rel_codes.scalar_type()).contiguous();
  const auto acc_type = accumulate_type_of(rel_codes.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rel_codes.scalar_type(), "decode_boxes_cpu", [&] {
    using in_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(acc_type, "decode_boxes_cpu_acc", [&] {
      using acc_t = scalar_t;
      const auto p = make_decode_params<acc_t>(weights, clamp, image_size);
      const in_t* c = codes.data_ptr<in_t>();
      const in_t* bx = b.data_ptr<in_t>();
      in_t* o = out.data_ptr<in_t>();
      at::parallel_for(0, n, std::max<int64_t>(1, kBlockPairs / k), [&](int64_t begin, int64_t end) {
        if (p.clip) {
          decode_rows<in_t, acc_t, true>(c, bx, o, begin, end, k, p);
        } else {
          decode_rows<in_t, acc_t, false>(c, bx, o, begin, end, k, p);
        }
      });
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> decode_boxes_backward_cpu(const at::Tensor& grad, const at::Tensor& rel_codes,
                                                             const at::Tensor& boxes, at::ArrayRef<double> weights,
                                                             double clamp, at::OptionalIntArrayRef image_size) {
  check_decode_boxes_args(rel_codes, boxes, weights, clamp, image_size);
  TORCH_CHECK_VALUE(grad.sizes() == rel_codes.sizes(), "grad must have the shape of decode_boxes' output ",
                    rel_codes.sizes(), ", got ", grad.sizes());
  const int64_t n = rel_codes.size(0), k = rel_codes.size(1) / 4;
  const auto acc_type = accumulate_type_of(rel_codes.scalar_type());
  const auto boxes_grad_type = boxes.is_floating_point() ? boxes.scalar_type() : acc_type;
  at::Tensor grad_codes = at::empty({n, 4 * k}, rel_codes.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor grad_boxes = at::zeros({n, 4}, rel_codes.options().dtype(acc_type));
  if (n > 0 && k > 0) {
    const at::Tensor codes = rel_codes.contiguous();
    const at::Tensor g = grad.to(rel_codes.scalar_type()).contiguous();
    const at::Tensor b = boxes.to(rel_codes.scalar_type()).contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rel_codes.scalar_type(), "decode_boxes_backward_cpu", [&] {
      using in_t = scalar_t;
      AT_DISPATCH_FLOATING_TYPES(acc_type, "decode_boxes_backward_cpu_acc", [&] {
        using acc_t = scalar_t;
        const auto p = make_decode_params<acc_t>(weights, clamp, image_size);
        const in_t* c = codes.data_ptr<in_t>();
        const in_t* gp = g.data_ptr<in_t>();
        const in_t* bx = b.data_ptr<in_t>();
        in_t* gc = grad_codes.data_ptr<in_t>();
        acc_t* gb = grad_boxes.data_ptr<acc_t>();
        at::parallel_for(0, n, std::max<int64_t>(1, 2048 / k), [&](int64_t begin, int64_t end) {
          for (int64_t row = begin; row < end; ++row) {
            acc_t box[4], gbox[4] = {0, 0, 0, 0};
            for (int j = 0; j < 4; ++j) box[j] = static_cast<acc_t>(bx[4 * row + j]);
            for (int64_t cls = 0; cls < k; ++cls) {
              const int64_t i = row * k + cls;
              acc_t d[4], go[4], gd[4];
              for (int j = 0; j < 4; ++j) {
                d[j] = static_cast<acc_t>(c[4 * i + j]);
                go[j] = static_cast<acc_t>(gp[4 * i + j]);
              }
              coding::decode_box_backward<acc_t>(box, d, p, go, gd, gbox);
              for (int j = 0; j < 4; ++j) gc[4 * i + j] = static_cast<in_t>(gd[j]);
            }
            for (int j = 0; j < 4; ++j) gb[4 * row + j] = gbox[j];
          }
        });
      });
    });
  } else {
    grad_codes.zero_();
  }
  return {grad_codes, grad_boxes.to(boxes_grad_type)};
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CPU, m) {
  m.impl("decode_boxes", &pydetops::decode_boxes_cpu);
  m.impl("_decode_boxes_backward", &pydetops::decode_boxes_backward_cpu);
}
