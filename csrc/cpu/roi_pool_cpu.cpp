// CPU kernels of roi_pool and its backward.
//
// Forward: parallel over (image, block of channels); the bin edges are computed
// once per RoI and shared by the block; the channel loop is innermost and
// contiguous (channels-last input read in place, other layouts from a
// per-thread transposed copy of the block), max and argmax branch-free.
// The output and argmax are contiguous [K, C, pooled_h, pooled_w].
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
#include "ops/roi_align.h"
#include "ops/roi_pool.h"

namespace pydetops {
namespace {

constexpr int64_t kBlock = cpu::kChannelBlock;

// Max and first argmax over one bin for a block of channels stored (H, W,
// channel) with unit channel stride; branch-free so that it vectorises.
// CB > 0: compile-time block width; CB == 0: `cbn` channels.
template <int CB, typename src_t, typename acc_t, typename idx_t>
inline void pool_bin_interleaved(const src_t* __restrict src, int64_t rs, int64_t cs, int64_t W, int64_t cbn,
                                 int64_t hs, int64_t he, int64_t ws, int64_t we, acc_t* __restrict m,
                                 idx_t* __restrict idx) {
  const int64_t n = CB > 0 ? CB : cbn;
  for (int64_t c = 0; c < n; ++c) {
    m[c] = static_cast<acc_t>(-FLT_MAX);
    idx[c] = -1;
  }
  for (int64_t h = hs; h < he; ++h)
    for (int64_t w = ws; w < we; ++w) {
      const src_t* __restrict px = src + h * rs + w * cs;
      const idx_t flat = static_cast<idx_t>(h * W + w);
      for (int64_t c = 0; c < n; ++c) {
        const acc_t v = static_cast<acc_t>(px[c]);
        const bool gt = v > m[c];
        m[c] = gt ? v : m[c];
        idx[c] = gt ? flat : idx[c];
      }
    }
}

// Forward. Tasks are (image, block of channels); a task reads the block in
// place when the input is channels-last, else from a per-thread (H, W, block)
// copy in the accumulate type, and pools every RoI of its image from it.
template <typename scalar_t, typename acc_t, typename idx_t>
void roi_pool_forward_kernel(const at::Tensor& input, const acc_t* rois, int64_t K, double scale, int64_t PH,
                             int64_t PW, scalar_t* out, int64_t* argmax) {
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t sN = input.stride(0), sC = input.stride(1), sH = input.stride(2), sW = input.stride(3);
  const scalar_t* data = input.data_ptr<scalar_t>();
  const int64_t nb = (C + kBlock - 1) / kBlock, ohw = PH * PW;
  const bool in_place = sC == 1 && C > 1;
  const cpu::RoIGroups groups = cpu::group_rois(rois, K, nullptr, 1, N);
  at::parallel_for(0, N * nb, 1, [&](int64_t t_begin, int64_t t_end) {
    alignas(64) acc_t m[kBlock];
    alignas(64) idx_t idx[kBlock];
    cpu::Scratch scratch;
    std::vector<int64_t> hs(PH), he(PH), ws(PW), we(PW);
    for (int64_t t = t_begin; t < t_end; ++t) {
      const int64_t n = t % N, c0 = (t / N) * kBlock, cbn = std::min(kBlock, C - c0);
      if (groups.begin[n] == groups.begin[n + 1]) continue;
      const scalar_t* base = data + n * sN + c0 * sC;
      const acc_t* tbuf = nullptr;
      if (!in_place) {
        acc_t* buf = scratch.get<acc_t>(H * W * cbn);
        for (int64_t h = 0; h < H; ++h)
          for (int64_t c = 0; c < cbn; ++c) {
            const scalar_t* row = base + c * sC + h * sH;
            acc_t* dst = buf + h * W * cbn + c;
            for (int64_t w = 0; w < W; ++w) dst[w * cbn] = static_cast<acc_t>(row[w * sW]);
          }
        tbuf = buf;
      }
      for (int64_t i = groups.begin[n]; i < groups.begin[n + 1]; ++i) {
        const int64_t k = groups.order[i];
        const acc_t* roi = rois + 5 * k;
        const RoIPoolBox b = roi_pool_box<acc_t>(roi[1], roi[2], roi[3], roi[4], scale);
        for (int64_t ph = 0; ph < PH; ++ph) roi_pool_bin<acc_t>(ph, PH, b.start_h, b.height, H, &hs[ph], &he[ph]);
        for (int64_t pw = 0; pw < PW; ++pw) roi_pool_bin<acc_t>(pw, PW, b.start_w, b.width, W, &ws[pw], &we[pw]);
        scalar_t* o = out + (k * C + c0) * ohw;
        int64_t* a = argmax + (k * C + c0) * ohw;
        for (int64_t ph = 0; ph < PH; ++ph)
          for (int64_t pw = 0; pw < PW; ++pw) {
            const int64_t cell = ph * PW + pw;
            if (!b.valid || he[ph] <= hs[ph] || we[pw] <= ws[pw]) {
              for (int64_t c = 0; c < cbn; ++c) {
                o[c * ohw + cell] = scalar_t(0);
                a[c * ohw + cell] = -1;
              }
              continue;
            }
            if (in_place) {
              if (cbn == kBlock)
                pool_bin_interleaved<kBlock>(base, sH, sW, W, cbn, hs[ph], he[ph], ws[pw], we[pw], m, idx);
              else
                pool_bin_interleaved<0>(base, sH, sW, W, cbn, hs[ph], he[ph], ws[pw], we[pw], m, idx);
            } else {
              if (cbn == kBlock)
                pool_bin_interleaved<kBlock>(tbuf, W * cbn, cbn, W, cbn, hs[ph], he[ph], ws[pw], we[pw], m, idx);
              else
                pool_bin_interleaved<0>(tbuf, W * cbn, cbn, W, cbn, hs[ph], he[ph], ws[pw], we[pw], m, idx);
            }
            for (int64_t c = 0; c < cbn; ++c) {
              o[c * ohw + cell] = static_cast<scalar_t>(m[c]);
              a[c * ohw + cell] = static_cast<int64_t>(idx[c]);
            }
          }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> roi_pool_cpu(const at::Tensor& input, const at::Tensor& boxes,
                                                double spatial_scale, int64_t pooled_height, int64_t pooled_width) {
  check_roi_align_args(input, boxes, spatial_scale, pooled_height, pooled_width);
  const int64_t K = boxes.size(0), C = input.size(1);
  at::Tensor out = at::empty({K, C, pooled_height, pooled_width}, input.options());
  at::Tensor argmax = at::empty({K, C, pooled_height, pooled_width}, input.options().dtype(at::kLong));
  if (out.numel() == 0) return {out, argmax};
  const auto acc_type = accumulate_type_of(input.scalar_type());
  const at::Tensor rois = boxes.to(acc_type).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_pool_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // int32 indices vectorise with float32 values; int64 only for maps of 2^31 pixels or more.
    if (input.size(2) * input.size(3) < (int64_t(1) << 31))
      roi_pool_forward_kernel<scalar_t, acc_t, int32_t>(input, rois.data_ptr<acc_t>(), K, spatial_scale,
                                                        pooled_height, pooled_width, out.data_ptr<scalar_t>(),
                                                        argmax.data_ptr<int64_t>());
    else
      roi_pool_forward_kernel<scalar_t, acc_t, int64_t>(input, rois.data_ptr<acc_t>(), K, spatial_scale,
                                                        pooled_height, pooled_width, out.data_ptr<scalar_t>(),
                                                        argmax.data_ptr<int64_t>());
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
    const int64_t* a = am.data_ptr<int64_t>();
    const int64_t nb = (C + kBlock - 1) / kBlock;
    AT_DISPATCH_FLOATING_TYPES(acc_type, "roi_pool_backward_cpu", [&] {
      const scalar_t* gp = g.data_ptr<scalar_t>();
      scalar_t* out = gi.data_ptr<scalar_t>();
      at::parallel_for(0, batch_size * nb, 1, [&](int64_t t_begin, int64_t t_end) {
        for (int64_t t = t_begin; t < t_end; ++t) {
          const int64_t n = t / nb, c0 = (t % nb) * kBlock, c1 = std::min(C, c0 + kBlock);
          for (int64_t i = begin[n]; i < begin[n + 1]; ++i) {
            const int64_t k = order[i];
            for (int64_t c = c0; c < c1; ++c) {
              scalar_t* plane = out + (n * C + c) * HW;
              const int64_t* ak = a + (k * C + c) * ohw;
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
