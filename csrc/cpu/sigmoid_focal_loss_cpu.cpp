// CPU kernels of sigmoid_focal_loss and its backward: exp(-|x|) and its
// log1p come from torch's vectorised (SIMD) exp and log1p over the whole
// tensor, then one pass over the elements does the rest
// (common/focal_loss_math.h, focal::terms_el); float16/bfloat16 computed in float32.
// 'mean' and 'sum' add the losses in fixed chunks of kChunk elements (each
// chunk summed in order, in float64), and the chunk sums in chunk order: the
// same bits for any thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "common/checks.h"
#include "common/focal_loss_math.h"
#include "ops/sigmoid_focal_loss.h"

namespace pydetops {
namespace {

constexpr int64_t kChunk = 8192;

// exp(-|x|) in the compute type (contiguous), by torch's vectorised kernels.
at::Tensor exp_neg_abs(const at::Tensor& x, at::ScalarType acc_type) {
  return x.to(acc_type).abs().neg_().exp_();
}

// The losses of elements [i0, i1) into out[0 .. i1 - i0). With kGammaTwo the
// exponent is the constant 2 (q * q): the loop has no pow call and vectorises.
template <bool kGammaTwo, typename in_t, typename acc_t>
void focal_losses(const in_t* __restrict__ xp, const in_t* __restrict__ tp, const acc_t* __restrict__ ep,
                  const acc_t* __restrict__ lp, int64_t i0, int64_t i1, acc_t a, acc_t gamma,
                  acc_t* __restrict__ out) {
  const acc_t g = kGammaTwo ? acc_t(2) : gamma;
  for (int64_t i = i0; i < i1; ++i) {
    const acc_t xi = static_cast<acc_t>(xp[i]), ti = static_cast<acc_t>(tp[i]);
    out[i - i0] = focal::loss_of_terms<acc_t>(focal::terms_el<acc_t>(xi, ti, g, ep[i], lp[i]), ti, a);
  }
}

// The gradients of elements [i0, i1); kScalarGrad: one upstream gradient for all.
template <bool kGammaTwo, bool kScalarGrad, typename in_t, typename acc_t>
void focal_grads(const in_t* __restrict__ xp, const in_t* __restrict__ tp, const acc_t* __restrict__ ep,
                 const acc_t* __restrict__ lp, const acc_t* __restrict__ gp, acc_t g_all, int64_t i0, int64_t i1,
                 acc_t a, acc_t gamma, in_t* __restrict__ gxp, in_t* __restrict__ gtp) {
  const acc_t g = kGammaTwo ? acc_t(2) : gamma;
  for (int64_t i = i0; i < i1; ++i) {
    const acc_t xi = static_cast<acc_t>(xp[i]), ti = static_cast<acc_t>(tp[i]);
    acc_t gx, gt;
    focal::backward_of_terms<acc_t>(focal::terms_el<acc_t>(xi, ti, g, ep[i], lp[i]), xi, ti, a, g,
                                    kScalarGrad ? g_all : gp[i], &gx, &gt);
    gxp[i] = static_cast<in_t>(gx);
    gtp[i] = static_cast<in_t>(gt);
  }
}

at::Tensor sigmoid_focal_loss_cpu(const at::Tensor& inputs, const at::Tensor& targets, double alpha, double gamma,
                                  c10::string_view reduction) {
  check_sigmoid_focal_loss_args(inputs, targets, alpha, gamma, reduction);
  const LossReduction red = parse_loss_reduction(reduction);
  const int64_t n = inputs.numel();
  const at::Tensor x = inputs.contiguous();
  const at::Tensor t = targets.to(inputs.scalar_type()).contiguous();
  const auto acc_type = accumulate_type_of(inputs.scalar_type());
  at::Tensor out = red == LossReduction::None ? at::empty(inputs.sizes(), inputs.options().memory_format(at::MemoryFormat::Contiguous))
                                              : at::empty({}, inputs.options());
  const at::Tensor e = exp_neg_abs(x, acc_type);
  const at::Tensor l = at::log1p(e);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, inputs.scalar_type(), "sigmoid_focal_loss_cpu", [&] {
    using in_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(acc_type, "sigmoid_focal_loss_cpu_acc", [&] {
      using acc_t = scalar_t;
      const in_t* xp = x.data_ptr<in_t>();
      const in_t* tp = t.data_ptr<in_t>();
      const acc_t* ep = e.data_ptr<acc_t>();
      const acc_t* lp = l.data_ptr<acc_t>();
      const acc_t a = static_cast<acc_t>(alpha), g = static_cast<acc_t>(gamma);
      const bool two = gamma == 2.0;
      // Fixed chunks of kChunk elements (independent of the thread count).
      const int64_t chunks = (n + kChunk - 1) / kChunk;
      std::vector<double> partial(static_cast<size_t>(chunks), 0.0);
      const bool none = red == LossReduction::None;
      in_t* op = none ? out.data_ptr<in_t>() : nullptr;
      at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
        std::vector<acc_t> buf(static_cast<size_t>(kChunk));
        for (int64_t c = c0; c < c1; ++c) {
          const int64_t i0 = c * kChunk, i1 = std::min(n, i0 + kChunk);
          if (two) {
            focal_losses<true>(xp, tp, ep, lp, i0, i1, a, g, buf.data());
          } else {
            focal_losses<false>(xp, tp, ep, lp, i0, i1, a, g, buf.data());
          }
          if (none) {
            for (int64_t i = i0; i < i1; ++i) op[i] = static_cast<in_t>(buf[i - i0]);
          } else {
            double sum = 0;
            for (int64_t i = 0; i < i1 - i0; ++i) sum += static_cast<double>(buf[i]);
            partial[c] = sum;
          }
        }
      });
      if (none) return;
      double total = 0;
      for (double s : partial) total += s;
      // mean of no element is NaN, as torch.mean.
      if (red == LossReduction::Mean) total = n > 0 ? total / static_cast<double>(n) : std::nan("");
      out.fill_(static_cast<acc_t>(total));
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> sigmoid_focal_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& inputs,
                                                                   const at::Tensor& targets, double alpha,
                                                                   double gamma, c10::string_view reduction) {
  check_sigmoid_focal_loss_args(inputs, targets, alpha, gamma, reduction);
  check_sigmoid_focal_loss_grad(grad, inputs, reduction);
  const LossReduction red = parse_loss_reduction(reduction);
  const int64_t n = inputs.numel();
  const at::Tensor x = inputs.contiguous();
  const at::Tensor t = targets.to(inputs.scalar_type()).contiguous();
  const auto acc_type = accumulate_type_of(inputs.scalar_type());
  const auto mem = inputs.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor grad_inputs = at::empty(inputs.sizes(), mem);
  at::Tensor grad_targets = at::empty(inputs.sizes(), mem);
  // The upstream gradient: per element ('none') or one value spread over all ('mean': / n).
  const at::Tensor g = red == LossReduction::None ? grad.to(acc_type).contiguous() : grad.to(at::kDouble).reshape({});
  const at::Tensor e = exp_neg_abs(x, acc_type);
  const at::Tensor l = at::log1p(e);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, inputs.scalar_type(), "sigmoid_focal_loss_backward_cpu", [&] {
    using in_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(acc_type, "sigmoid_focal_loss_backward_cpu_acc", [&] {
      using acc_t = scalar_t;
      const in_t* xp = x.data_ptr<in_t>();
      const in_t* tp = t.data_ptr<in_t>();
      const acc_t* ep = e.data_ptr<acc_t>();
      const acc_t* lp = l.data_ptr<acc_t>();
      in_t* gxp = grad_inputs.data_ptr<in_t>();
      in_t* gtp = grad_targets.data_ptr<in_t>();
      const acc_t a = static_cast<acc_t>(alpha), gm = static_cast<acc_t>(gamma);
      const acc_t* gp = red == LossReduction::None ? g.data_ptr<acc_t>() : nullptr;
      acc_t g_all = acc_t(0);
      if (red != LossReduction::None) {
        const double gv = g.item<double>();
        g_all = static_cast<acc_t>(red == LossReduction::Mean ? gv / static_cast<double>(n) : gv);
      }
      const bool two = gamma == 2.0;
      at::parallel_for(0, n, 2048, [&](int64_t i0, int64_t i1) {
        if (two && gp) {
          focal_grads<true, false>(xp, tp, ep, lp, gp, g_all, i0, i1, a, gm, gxp, gtp);
        } else if (two) {
          focal_grads<true, true>(xp, tp, ep, lp, gp, g_all, i0, i1, a, gm, gxp, gtp);
        } else if (gp) {
          focal_grads<false, false>(xp, tp, ep, lp, gp, g_all, i0, i1, a, gm, gxp, gtp);
        } else {
          focal_grads<false, true>(xp, tp, ep, lp, gp, g_all, i0, i1, a, gm, gxp, gtp);
        }
      });
    });
  });
  return {grad_inputs, grad_targets.to(targets.scalar_type())};
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, CPU, m) {
  m.impl("sigmoid_focal_loss", &pydetops::sigmoid_focal_loss_cpu);
  m.impl("_sigmoid_focal_loss_backward", &pydetops::sigmoid_focal_loss_backward_cpu);
}
