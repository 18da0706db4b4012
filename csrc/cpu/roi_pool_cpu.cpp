// CPU kernels of roi_pool and its backward.
//
// Forward: the bins of every RoI are laid out once; then tasks are (image,
// block of channels): a task copies its block of the image into a per-thread
// (H, W, block) buffer in the accumulate type and max-pools every RoI of the
// image from it (cpu/roi_max_pool_kernel.h: vectors of channels, branch-free,
// AVX2 where the CPU has it). The output and argmax are contiguous
// [K, C, pooled_h, pooled_w].
// Backward: parallel over (image, block of channels); each task owns those
// grad_input planes and adds the RoIs of its image in increasing order, so the
// result is bit-identical for any thread count.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cfloat>
#include <vector>

#include "common/checks.h"
#include "common/roi_math.h"
#include "cpu/roi_align_kernel.h"
#include "cpu/parallel_grain.h"
#include "cpu/roi_max_pool_kernel.h"
#include "ops/roi_align.h"
#include "ops/roi_pool.h"

namespace pydetops {
namespace {

constexpr int64_t kBlock = cpu::kChannelBlock;  // backward

// Forward. acc_t: the input's accumulate type, in which the bin edges are
// computed (as torchvision) and values compared. H * W < 2^31 (checked).
template <typename scalar_t, typename acc_t>
void roi_pool_forward_kernel(const at::Tensor& input, const acc_t* rois, int64_t K, double scale, int64_t PH,
                             int64_t PW, scalar_t* out, int32_t* argmax) {
  using V = typename cpu::MaxVec<acc_t>::V;
  using I = typename cpu::MaxVec<acc_t>::I;
  using idx_t = typename cpu::MaxVec<acc_t>::idx_t;
  constexpr int64_t CB = cpu::max_block_channels<acc_t>();
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t sN = input.stride(0), sC = input.stride(1), sH = input.stride(2), sW = input.stride(3);
  const scalar_t* data = input.data_ptr<scalar_t>();
  const int64_t nb = (C + CB - 1) / CB, ohw = PH * PW;
  // Bins of every RoI, row-major; an invalid RoI has only empty bins.
  std::vector<cpu::MaxBin> bins(static_cast<size_t>(K * ohw));
  at::parallel_for(0, K, 256, [&](int64_t k_begin, int64_t k_end) {
    std::vector<int64_t> hs(PH), he(PH), ws(PW), we(PW);
    for (int64_t k = k_begin; k < k_end; ++k) {
      const acc_t* roi = rois + 5 * k;
      const RoIPoolBox b = roi_pool_box<acc_t>(roi[1], roi[2], roi[3], roi[4], scale);
      for (int64_t ph = 0; ph < PH; ++ph) roi_pool_bin<acc_t>(ph, PH, b.start_h, b.height, H, &hs[ph], &he[ph]);
      for (int64_t pw = 0; pw < PW; ++pw) roi_pool_bin<acc_t>(pw, PW, b.start_w, b.width, W, &ws[pw], &we[pw]);
      cpu::MaxBin* kb = bins.data() + k * ohw;
      for (int64_t ph = 0; ph < PH; ++ph)
        for (int64_t pw = 0; pw < PW; ++pw)
          kb[ph * PW + pw] = b.valid ? cpu::MaxBin{hs[ph], he[ph], ws[pw], we[pw]} : cpu::MaxBin{0, 0, 0, 0};
    }
  });
  const cpu::RoIGroups groups = cpu::group_rois(rois, K, nullptr, 1, N);
  const cpu::MaxBinsFn<cpu::MaxRule::kSkipNaN, acc_t> pool = cpu::pick_max_bins<cpu::MaxRule::kSkipNaN, acc_t>();
  // Work: the block copies of the images that have RoIs, then each RoI's bins
  // (at least one cell each) for every channel.
  const double copy_work = static_cast<double>(std::min(N, K)) * static_cast<double>(H * W) * static_cast<double>(C);
  const double bin_work = static_cast<double>(K) * static_cast<double>(ohw) * static_cast<double>(C) * 4.0;
  at::parallel_for(0, N * nb, cpu::grain_for_total(N * nb, copy_work + bin_work), [&](int64_t t_begin,
                                                                                          int64_t t_end) {
    cpu::AlignedBuffer<V> blk_buf, mt_buf;
    cpu::AlignedBuffer<I> it_buf;
    const int64_t chunk = std::min<int64_t>(ohw, cpu::kMaxBinChunk);
    V* const mt = mt_buf.get(chunk * cpu::kMaxVecs);
    I* const it = it_buf.get(chunk * cpu::kMaxVecs);
    for (int64_t t = t_begin; t < t_end; ++t) {
      const int64_t n = t % N, c0 = (t / N) * CB, cbn = std::min(CB, C - c0);
      if (groups.begin[n] == groups.begin[n + 1]) continue;
      V* const blk = blk_buf.get(H * W * cpu::kMaxVecs);
      cpu::fill_max_block<scalar_t, acc_t>(data + n * sN + c0 * sC, sC, sH, sW, H, W, cbn, blk);
      const acc_t* ms = reinterpret_cast<const acc_t*>(mt);
      const idx_t* is = reinterpret_cast<const idx_t*>(it);
      for (int64_t i = groups.begin[n]; i < groups.begin[n + 1]; ++i) {
        const int64_t k = groups.order[i];
        scalar_t* o = out + (k * C + c0) * ohw;
        int32_t* a = argmax + (k * C + c0) * ohw;
        for (int64_t cell0 = 0; cell0 < ohw; cell0 += chunk) {
          const int64_t n_cells = std::min(chunk, ohw - cell0);
          pool(blk, W, bins.data() + k * ohw + cell0, n_cells, mt, it);
          for (int64_t c = 0; c < cbn; ++c)
            for (int64_t cell = 0; cell < n_cells; ++cell) {
              o[c * ohw + cell0 + cell] = static_cast<scalar_t>(ms[cell * CB + c]);
              a[c * ohw + cell0 + cell] = static_cast<int32_t>(is[cell * CB + c]);
            }
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> roi_pool_cpu(const at::Tensor& input, const at::Tensor& boxes,
                                                double spatial_scale, int64_t pooled_height, int64_t pooled_width) {
  check_roi_pool_forward_args(input, boxes, spatial_scale, pooled_height, pooled_width);
  const int64_t K = boxes.size(0), C = input.size(1);
  at::Tensor out = at::empty({K, C, pooled_height, pooled_width}, input.options());
  at::Tensor argmax = at::empty({K, C, pooled_height, pooled_width}, input.options().dtype(at::kInt));
  if (out.numel() == 0) return {out, argmax};
  const auto acc_type = accumulate_type_of(input.scalar_type());
  const at::Tensor rois = boxes.to(acc_type).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_pool_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    roi_pool_forward_kernel<scalar_t, acc_t>(input, rois.data_ptr<acc_t>(), K, spatial_scale, pooled_height,
                                             pooled_width, out.data_ptr<scalar_t>(), argmax.data_ptr<int32_t>());
  });
  return {out, argmax};
}

at::Tensor roi_pool_backward_cpu(const at::Tensor& grad, const at::Tensor& boxes, const at::Tensor& argmax,
                                 double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                                 int64_t batch_size, int64_t channels, int64_t height, int64_t width) {
  check_roi_pool_backward_args(grad, boxes, argmax, spatial_scale, pooled_height, pooled_width, batch_size, channels,
                               height, width);
  TORCH_CHECK_TYPE(boxes.scalar_type() == grad.scalar_type(), "boxes must have the dtype of grad (",
                   grad.scalar_type(), "), got ", boxes.scalar_type());
  const auto acc_type = accumulate_type_of(grad.scalar_type());
  at::Tensor gi = at::zeros({batch_size, channels, height, width}, grad.options().dtype(acc_type));
  const int64_t K = boxes.size(0), C = channels, HW = height * width, ohw = pooled_height * pooled_width;
  if (gi.numel() > 0 && K > 0) {
    const at::Tensor rois = boxes.to(at::kDouble).contiguous();
    const double* r = rois.data_ptr<double>();
    // RoIs of each image, in increasing order.
    std::vector<int64_t> begin(batch_size + 1, 0), order(K);
    for (int64_t k = 0; k < K; ++k) ++begin[static_cast<int64_t>(r[5 * k]) + 1];
    for (int64_t n = 0; n < batch_size; ++n) begin[n + 1] += begin[n];
    std::vector<int64_t> fill(begin.begin(), begin.end() - 1);
    for (int64_t k = 0; k < K; ++k) order[fill[static_cast<int64_t>(r[5 * k])]++] = k;
    const at::Tensor am = argmax.contiguous();
    const at::Tensor g = grad.to(acc_type).contiguous();
    const int32_t* a = am.data_ptr<int32_t>();
    const int64_t nb = (C + kBlock - 1) / kBlock;
    AT_DISPATCH_FLOATING_TYPES(acc_type, "roi_pool_backward_cpu", [&] {
      const scalar_t* gp = g.data_ptr<scalar_t>();
      scalar_t* out = gi.data_ptr<scalar_t>();
      const double work = static_cast<double>(K) * static_cast<double>(C) *
                          static_cast<double>(pooled_height * pooled_width) * 2.0;
      at::parallel_for(0, batch_size * nb, cpu::grain_for_total(batch_size * nb, work), [&](int64_t t_begin,
                                                                                              int64_t t_end) {
        for (int64_t t = t_begin; t < t_end; ++t) {
          const int64_t n = t / nb, c0 = (t % nb) * kBlock, c1 = std::min(C, c0 + kBlock);
          for (int64_t i = begin[n]; i < begin[n + 1]; ++i) {
            const int64_t k = order[i];
            for (int64_t c = c0; c < c1; ++c) {
              scalar_t* plane = out + (n * C + c) * HW;
              const int32_t* ak = a + (k * C + c) * ohw;
              const scalar_t* gk = gp + (k * C + c) * ohw;
              for (int64_t j = 0; j < ohw; ++j) {
                const int64_t pos = ak[j];
                if (pos >= 0 && pos < HW) plane[pos] += gk[j];
              }
            }
          }
        }
      });
    });
  }
  return gi.to(grad.scalar_type());
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CPU, m) {
  m.impl("roi_pool", &pydetops::roi_pool_cpu);
  m.impl("_roi_pool_backward", &pydetops::roi_pool_backward_cpu);
}
