// CPU kernels of sigmoid_focal_loss and its backward: one pass over the
// elements (common/focal_loss_math.h), float16/bfloat16 computed in float32.
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, inputs.scalar_type(), "sigmoid_focal_loss_cpu", [&] {
    using in_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(acc_type, "sigmoid_focal_loss_cpu_acc", [&] {
      using acc_t = scalar_t;
      const in_t* xp = x.data_ptr<in_t>();
      const in_t* tp = t.data_ptr<in_t>();
      const acc_t a = static_cast<acc_t>(alpha), g = static_cast<acc_t>(gamma);
      if (red == LossReduction::None) {
        in_t* op = out.data_ptr<in_t>();
        at::parallel_for(0, n, 2048, [&](int64_t i0, int64_t i1) {
          for (int64_t i = i0; i < i1; ++i) {
            op[i] = static_cast<in_t>(
                focal::loss<acc_t>(static_cast<acc_t>(xp[i]), static_cast<acc_t>(tp[i]), a, g));
          }
        });
        return;
      }
      const int64_t chunks = (n + kChunk - 1) / kChunk;
      std::vector<double> partial(static_cast<size_t>(chunks), 0.0);
      at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          double s = 0;
          const int64_t end = std::min(n, (c + 1) * kChunk);
          for (int64_t i = c * kChunk; i < end; ++i) {
            s += static_cast<double>(focal::loss<acc_t>(static_cast<acc_t>(xp[i]), static_cast<acc_t>(tp[i]), a, g));
          }
          partial[c] = s;
        }
      });
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, inputs.scalar_type(), "sigmoid_focal_loss_backward_cpu", [&] {
    using in_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(acc_type, "sigmoid_focal_loss_backward_cpu_acc", [&] {
      using acc_t = scalar_t;
      const in_t* xp = x.data_ptr<in_t>();
      const in_t* tp = t.data_ptr<in_t>();
      in_t* gxp = grad_inputs.data_ptr<in_t>();
      in_t* gtp = grad_targets.data_ptr<in_t>();
      const acc_t a = static_cast<acc_t>(alpha), gm = static_cast<acc_t>(gamma);
      const acc_t* gp = red == LossReduction::None ? g.data_ptr<acc_t>() : nullptr;
      acc_t g_all = acc_t(0);
      if (red != LossReduction::None) {
        const double gv = g.item<double>();
        g_all = static_cast<acc_t>(red == LossReduction::Mean ? gv / static_cast<double>(n) : gv);
      }
      at::parallel_for(0, n, 2048, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          acc_t gx, gt;
          focal::loss_backward<acc_t>(static_cast<acc_t>(xp[i]), static_cast<acc_t>(tp[i]), a, gm,
                                      gp ? gp[i] : g_all, &gx, &gt);
          gxp[i] = static_cast<in_t>(gx);
          gtp[i] = static_cast<in_t>(gt);
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
