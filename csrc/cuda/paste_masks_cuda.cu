// CUDA kernel of paste_masks: one thread per output pixel (grid-stride), each
// writing its pixel once: a bilinear sample of the zero-padded mask inside the
// mask's clipped integer box, 0 elsewhere (no separate zero fill, no resized
// mask per RoI, no host synchronisation). The integer boxes are computed first
// by a small kernel, with the same function as on the CPU.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "common/checks.h"
#include "common/paste_keypoints_math.h"
#include "ops/paste_keypoints.h"

namespace pydetops {
namespace {

constexpr int kThreads = 256;

inline unsigned int blocks_for(int64_t n, int threads) {
  return static_cast<unsigned int>(std::min<int64_t>(std::max<int64_t>(1, (n + threads - 1) / threads), 1 << 20));
}

// ib: [N, 6] int64 rows (x0, y0, x1, y1, w, h); an invalid box gets an empty range.
template <typename box_t>
__global__ void integer_boxes_kernel(const box_t* __restrict__ boxes, int64_t n, double scale,
                                     int64_t* __restrict__ ib) {
  using opmath_t = at::opmath_type<box_t>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const pk::PasteBox b = pk::expand_and_round_box<box_t, opmath_t>(boxes[4 * i], boxes[4 * i + 1],
                                                                     boxes[4 * i + 2], boxes[4 * i + 3], scale);
    int64_t* o = ib + 6 * i;
    if (b.valid) {
      o[0] = b.x0; o[1] = b.y0; o[2] = b.x1; o[3] = b.y1; o[4] = b.w; o[5] = b.h;
    } else {
      o[0] = 0; o[1] = 0; o[2] = -1; o[3] = -1; o[4] = 1; o[5] = 1;
    }
  }
}

template <typename scalar_t>
__global__ void paste_masks_kernel(const scalar_t* __restrict__ masks, const int64_t* __restrict__ ib, int64_t total,
                                   int64_t H, int64_t W, int64_t MH, int64_t MW, int64_t padding, int64_t sN,
                                   int64_t sH, int64_t sW, scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t PH = MH + 2 * padding, PW = MW + 2 * padding;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t x = i % W;
    const int64_t y = (i / W) % H;
    const int64_t n = i / (W * H);
    const int64_t* b = ib + 6 * n;
    acc_t v = 0;
    if (x >= b[0] && x <= b[2] && y >= b[1] && y <= b[3]) {
      const pk::LinearTap ty = pk::linear_tap(y - b[1], PH, b[5]);
      const pk::LinearTap tx = pk::linear_tap(x - b[0], PW, b[4]);
      const int64_t r0 = ty.i0 - padding, r1 = ty.i1 - padding, c0 = tx.i0 - padding, c1 = tx.i1 - padding;
      const bool in_r0 = r0 >= 0 && r0 < MH, in_r1 = r1 >= 0 && r1 < MH;
      const bool in_c0 = c0 >= 0 && c0 < MW, in_c1 = c1 >= 0 && c1 < MW;
      const scalar_t* m = masks + n * sN;
      const acc_t v00 = (in_r0 && in_c0) ? static_cast<acc_t>(m[r0 * sH + c0 * sW]) : acc_t(0);
      const acc_t v01 = (in_r0 && in_c1) ? static_cast<acc_t>(m[r0 * sH + c1 * sW]) : acc_t(0);
      const acc_t v10 = (in_r1 && in_c0) ? static_cast<acc_t>(m[r1 * sH + c0 * sW]) : acc_t(0);
      const acc_t v11 = (in_r1 && in_c1) ? static_cast<acc_t>(m[r1 * sH + c1 * sW]) : acc_t(0);
      const acc_t wy0 = static_cast<acc_t>(ty.l0), wy1 = static_cast<acc_t>(ty.l1);
      const acc_t wx0 = static_cast<acc_t>(tx.l0), wx1 = static_cast<acc_t>(tx.l1);
      v = wy0 * (wx0 * v00 + wx1 * v01) + wy1 * (wx0 * v10 + wx1 * v11);
    }
    out[i] = static_cast<scalar_t>(v);
  }
}

at::Tensor paste_masks_cuda(const at::Tensor& masks, const at::Tensor& boxes, int64_t image_height,
                            int64_t image_width, int64_t padding) {
  check_paste_masks_args(masks, boxes, image_height, image_width, padding);
  const c10::cuda::CUDAGuard guard(masks.device());
  const int64_t N = masks.size(0);
  at::Tensor out = at::empty({N, 1, image_height, image_width}, masks.options());
  if (out.numel() == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t MW = masks.size(3);
  const double scale = static_cast<double>(MW + 2 * padding) / static_cast<double>(MW);
  const at::Tensor b = boxes.contiguous();
  at::Tensor ib = at::empty({N, 6}, boxes.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.scalar_type(), "paste_masks_boxes_cuda", [&] {
    integer_boxes_kernel<scalar_t><<<blocks_for(N, kThreads), kThreads, 0, stream>>>(
        b.const_data_ptr<scalar_t>(), N, scale, ib.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, masks.scalar_type(), "paste_masks_cuda", [&] {
    paste_masks_kernel<scalar_t><<<blocks_for(out.numel(), kThreads), kThreads, 0, stream>>>(
        masks.const_data_ptr<scalar_t>(), ib.const_data_ptr<int64_t>(), out.numel(), image_height, image_width,
        masks.size(2), MW, padding, masks.stride(0), masks.stride(2), masks.stride(3),
        out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CUDA, m) {
  m.impl("paste_masks", &pydetops::paste_masks_cuda);
}
