// Autograd of box_overlaps: saves both box sets, backward recomputes each pair.
#include <torch/autograd.h>
#include <torch/library.h>

#include "ops/box_overlaps.h"

namespace pydetops {
namespace {

// box_overlaps as a composite of differentiable ATen ops, term by term the
// formula of common/box_overlap_math.h (torchvision's): used only to
// differentiate the backward (create_graph=True), so that second derivatives
// (gradient penalties, gradgradcheck) are those of the formula.
// CIoU: returns DIoU and sets *ciou_v, *ciou_alpha (CIoU = DIoU - alpha v,
// alpha a constant in the first derivative); other modes leave them undefined.
at::Tensor box_overlaps_composite(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view mode_name,
                                  bool aligned, double eps, at::Tensor* ciou_v, at::Tensor* ciou_alpha) {
  const OverlapMode mode = parse_overlap_mode(mode_name);
  const at::Tensor a = aligned ? boxes1 : boxes1.unsqueeze(1);  // [N, 1, 4] against [1, M, 4]
  const at::Tensor b = aligned ? boxes2 : boxes2.unsqueeze(0);
  const at::Tensor ax1 = a.select(-1, 0), ay1 = a.select(-1, 1), ax2 = a.select(-1, 2), ay2 = a.select(-1, 3);
  const at::Tensor bx1 = b.select(-1, 0), by1 = b.select(-1, 1), bx2 = b.select(-1, 2), by2 = b.select(-1, 3);
  const at::Tensor area_a = (ax2 - ax1) * (ay2 - ay1), area_b = (bx2 - bx1) * (by2 - by1);
  const at::Tensor iw = at::minimum(ax2, bx2) - at::maximum(ax1, bx1);
  const at::Tensor ih = at::minimum(ay2, by2) - at::maximum(ay1, by1);
  if (mode == OverlapMode::IoF) {
    const at::Tensor inter = iw.clamp_min(0) * ih.clamp_min(0);
    return inter / (aligned ? area_a + eps : area_a);
  }
  const at::Tensor inter =
      aligned ? at::where(at::logical_and(iw > 0, ih > 0), iw * ih, at::zeros_like(iw)) : iw.clamp_min(0) * ih.clamp_min(0);
  const at::Tensor uni = area_a + area_b - inter;
  const at::Tensor iou = inter / (aligned ? uni + eps : uni);
  if (mode == OverlapMode::IoU) return iou;
  at::Tensor cw = at::maximum(ax2, bx2) - at::minimum(ax1, bx1);
  at::Tensor ch = at::maximum(ay2, by2) - at::minimum(ay1, by1);
  if (!aligned) {
    cw = cw.clamp_min(0);
    ch = ch.clamp_min(0);
  }
  if (mode == OverlapMode::GIoU) {
    const at::Tensor enclose = cw * ch;
    return iou - (enclose - uni) / (enclose + eps);
  }
  const at::Tensor diag2 = cw * cw + ch * ch + eps;
  const at::Tensor dx = (ax1 + ax2) * 0.5 - (bx1 + bx2) * 0.5;
  const at::Tensor dy = (ay1 + ay2) * 0.5 - (by1 + by2) * 0.5;
  const at::Tensor diou = iou - (dx * dx + dy * dy) / diag2;
  if (mode == OverlapMode::DIoU) return diou;
  const at::Tensor delta = at::atan((ax2 - ax1) / (ay2 - ay1)) - at::atan((bx2 - bx1) / (by2 - by1));
  *ciou_v = 0.40528473456935108578 * (delta * delta);  // 4 / pi^2
  *ciou_alpha = *ciou_v / (1.0 - iou + *ciou_v + eps);
  return diou;
}

class BoxOverlapsFunction : public torch::autograd::Function<BoxOverlapsFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& boxes1,
                            const at::Tensor& boxes2, c10::string_view mode, bool aligned, double eps) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({boxes1, boxes2});
    ctx->saved_data["mode"] = std::string(mode);
    ctx->saved_data["aligned"] = aligned;
    ctx->saved_data["eps"] = eps;
    return box_overlaps(boxes1, boxes2, mode, aligned, eps);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& grad = grad_outputs[0];
    if (at::GradMode::is_enabled() &&
        (grad.requires_grad() || saved[0].requires_grad() || saved[1].requires_grad())) {
      // create_graph=True: the gradient must itself be differentiable.
      const auto acc = box_overlaps_compute_type(saved[0].scalar_type());
      at::Tensor ciou_v, ciou_alpha;
      const at::Tensor out = box_overlaps_composite(saved[0].to(acc), saved[1].to(acc),
                                                    ctx->saved_data["mode"].toStringRef(),
                                                    ctx->saved_data["aligned"].toBool(),
                                                    ctx->saved_data["eps"].toDouble(), &ciou_v, &ciou_alpha);
      const at::Tensor g_out = grad.to(out.scalar_type());
      std::vector<at::Tensor> wrt;
      for (int i = 0; i < 2; ++i)
        if (saved[i].requires_grad()) wrt.push_back(saved[i]);
      if (wrt.empty()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
      // The first derivative holds alpha constant (torchvision's no_grad), so it is
      // vjp(DIoU, g) - vjp(v, g * alpha): alpha enters as a (live) cotangent and
      // its own dependence on the boxes shows up in the second derivative.
      std::vector<at::Tensor> outs{out}, cot{g_out};
      if (ciou_v.defined()) {
        outs.push_back(ciou_v);
        cot.push_back(-(g_out * ciou_alpha));
      }
      auto g = torch::autograd::grad(outs, wrt, cot, /*retain_graph=*/true, /*create_graph=*/true,
                                     /*allow_unused=*/true);
      at::Tensor g1, g2;
      size_t k = 0;
      if (saved[0].requires_grad()) g1 = g[k++];
      if (saved[1].requires_grad()) g2 = g[k++];
      return {g1, g2, at::Tensor(), at::Tensor(), at::Tensor()};
    }
    auto grads = box_overlaps_backward(grad_outputs[0], saved[0], saved[1], ctx->saved_data["mode"].toStringRef(),
                                       ctx->saved_data["aligned"].toBool(), ctx->saved_data["eps"].toDouble());
    return {std::get<0>(grads), std::get<1>(grads), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor box_overlaps_autograd(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view mode,
                                 bool aligned, double eps) {
  return BoxOverlapsFunction::apply(boxes1, boxes2, mode, aligned, eps);
}

}  // namespace
}  // namespace pydetops

TORCH_LIBRARY_IMPL(pydetops, Autograd, m) {
  m.impl("box_overlaps", &pydetops::box_overlaps_autograd);
}
