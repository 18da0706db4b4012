// The overlap of two boxes (x1, y1, x2, y2) and its gradient: IoU, IoF, GIoU,
// DIoU, CIoU. Written once for the CPU and CUDA kernels.
//
// The formulas follow torchvision term by term (same operations in the same
// order, so float64 results match it to the last bit or two):
//  * matrix form (box_iou, generalized_box_iou, distance_box_iou,
//    complete_box_iou): inter = clamp(w, 0) * clamp(h, 0); IoU = inter / union
//    with no eps; the enclosing box's sides are clamped at 0.
//  * aligned form (the *_box_iou_loss functions): inter = w * h where both
//    w > 0 and h > 0, else 0; IoU = inter / (union + eps); the enclosing box's
//    sides are not clamped.
//  * GIoU = IoU - (C - union) / (C + eps), C the enclosing area.
//  * DIoU = IoU - d^2 / (c^2 + eps), d the distance of the centres
//    ((x1 + x2) / 2 per box, then subtracted), c the enclosing diagonal.
//  * CIoU = DIoU - alpha v, v = 4/pi^2 (atan(w1/h1) - atan(w2/h2))^2,
//    alpha = v / (1 - IoU + v + eps), alpha held constant in the gradient.
//  * IoF = inter / (area1 + eps in aligned form): intersection over the first
//    box, inter = clamp(w, 0) * clamp(h, 0) in both forms.
// A NaN coordinate makes every overlap with its box NaN (for IoF too: its
// intersection takes NaN-propagating max/min, as torch.maximum does).
//
// Everything that depends on one box only (area, centre, atan(w/h)) is a
// BoxTerms, computed once per box: the matrix kernels precompute them for both
// box sets and the pair functions only combine two BoxTerms. (The CPU kernels
// take the angle from torch's vectorised atan over all boxes, the values
// torch.atan gives torchvision; box_terms' scalar atan is the fallback.) The result is
// bit-identical to computing them per pair, provided the compiler does not
// contract a*b+c into FMAs differently per call site: compile with
// -ffp-contract=off (CMakeLists.txt does; nvcc: --fmad=false where bit-equality
// with the CPU matters).
#pragma once
#include <cmath>

#include "common/macros.h"

namespace pydetops {

enum class OverlapMode : int { IoU = 0, IoF = 1, GIoU = 2, DIoU = 3, CIoU = 4 };

// max/min that keep the FIRST argument when it is NaN (cheap: one compare).
template <typename T>
PYDETOPS_HOST_DEVICE inline T max_of(T a, T b) { return a < b ? b : a; }
template <typename T>
PYDETOPS_HOST_DEVICE inline T min_of(T a, T b) { return b < a ? b : a; }
// max/min that return NaN when EITHER argument is NaN (torch.maximum/minimum).
template <typename T>
PYDETOPS_HOST_DEVICE inline T max_nan(T a, T b) { return (a < b || b != b) ? b : a; }
template <typename T>
PYDETOPS_HOST_DEVICE inline T min_nan(T a, T b) { return (b < a || b != b) ? b : a; }

// Gradient split of max(a, b) / min(a, b): all to the winner, half each on a tie
// (what torch.maximum / torch.minimum do).
template <typename T>
PYDETOPS_HOST_DEVICE inline T max_share_first(T a, T b) { return a > b ? T(1) : (a < b ? T(0) : T(0.5)); }
template <typename T>
PYDETOPS_HOST_DEVICE inline T min_share_first(T a, T b) { return a < b ? T(1) : (a > b ? T(0) : T(0.5)); }

// 4 / pi^2, the CIoU aspect-ratio factor.
template <typename T>
PYDETOPS_HOST_DEVICE constexpr T ciou_k() { return T(0.40528473456935108578); }

// The terms of one box that every pair with it reuses.
template <typename T>
struct BoxTerms {
  T x1, y1, x2, y2;
  T area;    // (x2 - x1) * (y2 - y1)
  T cx, cy;  // (x1 + x2) / 2, (y1 + y2) / 2       (DIoU, CIoU)
  T angle;   // atan((x2 - x1) / (y2 - y1))         (CIoU)
};

template <OverlapMode kMode, typename T>
PYDETOPS_HOST_DEVICE inline BoxTerms<T> box_terms(T x1, T y1, T x2, T y2) {
  BoxTerms<T> t;
  t.x1 = x1; t.y1 = y1; t.x2 = x2; t.y2 = y2;
  t.area = (x2 - x1) * (y2 - y1);
  t.cx = (x1 + x2) * T(0.5);
  t.cy = (y1 + y2) * T(0.5);
  t.angle = kMode == OverlapMode::CIoU ? T(atan((x2 - x1) / (y2 - y1))) : T(0);
  return t;
}

// The overlap of two boxes from their precomputed terms.
template <OverlapMode kMode, bool kAligned, typename T>
PYDETOPS_HOST_DEVICE inline T box_overlap_terms(const BoxTerms<T>& a, const BoxTerms<T>& b, T eps) {
  T inter;
  if (kMode == OverlapMode::IoF) {
    // torchvision has no IoF: clamp(w, 0) * clamp(h, 0) in both forms (as mmcv).
    const T iw = min_nan(a.x2, b.x2) - max_nan(a.x1, b.x1);
    const T ih = min_nan(a.y2, b.y2) - max_nan(a.y1, b.y1);
    inter = max_of(iw, T(0)) * max_of(ih, T(0));
    return inter / (a.area + (kAligned ? eps : T(0)));
  }
  // A NaN coordinate of b may be dropped by max_of/min_of here, but it makes
  // b.area and so the union NaN: the result is NaN all the same.
  const T iw = min_of(a.x2, b.x2) - max_of(a.x1, b.x1);
  const T ih = min_of(a.y2, b.y2) - max_of(a.y1, b.y1);
  inter = kAligned ? ((iw > T(0) && ih > T(0)) ? iw * ih : T(0)) : max_of(iw, T(0)) * max_of(ih, T(0));
  const T uni = a.area + b.area - inter;
  const T iou = inter / (kAligned ? uni + eps : uni);
  if (kMode == OverlapMode::IoU) return iou;

  T cw = max_of(a.x2, b.x2) - min_of(a.x1, b.x1);
  T ch = max_of(a.y2, b.y2) - min_of(a.y1, b.y1);
  if (!kAligned) {
    cw = max_of(cw, T(0));
    ch = max_of(ch, T(0));
  }
  if (kMode == OverlapMode::GIoU) {
    const T enclose = cw * ch;
    return iou - (enclose - uni) / (enclose + eps);
  }
  const T diag2 = cw * cw + ch * ch + eps;
  const T dx = a.cx - b.cx;
  const T dy = a.cy - b.cy;
  const T diou = iou - (dx * dx + dy * dy) / diag2;
  if (kMode == OverlapMode::DIoU) return diou;

  const T delta = a.angle - b.angle;
  const T v = ciou_k<T>() * (delta * delta);
  const T alpha = v / (T(1) - iou + v + eps);
  return diou - alpha * v;
}

template <OverlapMode kMode, bool kAligned, typename T>
PYDETOPS_HOST_DEVICE inline T box_overlap(T ax1, T ay1, T ax2, T ay2, T bx1, T by1, T bx2, T by2, T eps) {
  return box_overlap_terms<kMode, kAligned, T>(box_terms<kMode, T>(ax1, ay1, ax2, ay2),
                                               box_terms<kMode, T>(bx1, by1, bx2, by2), eps);
}

// d(overlap)/d(box a) and d(overlap)/d(box b), scaled by the incoming gradient g,
// ADDED to ga[0..3] and gb[0..3]. At kinks it picks torch autograd's choice for
// torchvision's formula: ties of max/min split the gradient in half; the
// matrix form's clamp(min=0) (and IoF's) passes the gradient at exactly 0; the
// aligned form's intersection has a gradient only where both sides are > 0.
template <OverlapMode kMode, bool kAligned, typename T>
PYDETOPS_HOST_DEVICE inline void box_overlap_backward(const T* a, const T* b, T eps, T g, T* ga, T* gb) {
  const T ax1 = a[0], ay1 = a[1], ax2 = a[2], ay2 = a[3];
  const T bx1 = b[0], by1 = b[1], bx2 = b[2], by2 = b[3];
  const T wa = ax2 - ax1, ha = ay2 - ay1, wb = bx2 - bx1, hb = by2 - by1;
  const T area_a = wa * ha, area_b = wb * hb;
  const T iw_raw = min_of(ax2, bx2) - max_of(ax1, bx1);
  const T ih_raw = min_of(ay2, by2) - max_of(ay1, by1);
  // Where the gradient passes into iw_raw / ih_raw, and the factor it meets.
  bool pass_iw, pass_ih;
  T iw, ih;
  if (kAligned && kMode != OverlapMode::IoF) {
    const bool on = iw_raw > T(0) && ih_raw > T(0);
    pass_iw = pass_ih = on;
    iw = on ? iw_raw : T(0);
    ih = on ? ih_raw : T(0);
  } else {
    pass_iw = iw_raw >= T(0);
    pass_ih = ih_raw >= T(0);
    iw = max_of(iw_raw, T(0));
    ih = max_of(ih_raw, T(0));
  }
  const T inter = iw * ih;
  const T iou_eps = kAligned ? eps : T(0);

  // Gradients w.r.t. the intermediate quantities, accumulated below.
  T g_inter = 0, g_area_a = 0, g_area_b = 0, g_cw = 0, g_ch = 0;
  T g_dx = 0, g_dy = 0, g_wa = 0, g_ha = 0, g_wb = 0, g_hb = 0;
  T cw = 0, ch = 0;

  if (kMode == OverlapMode::IoF) {
    const T d = area_a + iou_eps;
    g_inter = g / d;
    g_area_a = -g * inter / (d * d);
  } else {
    const T uni = area_a + area_b - inter;
    const T ud = uni + iou_eps;
    const T iou = inter / ud;
    // iou = inter / (area_a + area_b - inter + e)
    T g_iou = g;
    T g_uni = 0;
    if (kMode != OverlapMode::IoU) {
      const T cw_raw = max_of(ax2, bx2) - min_of(ax1, bx1);
      const T ch_raw = max_of(ay2, by2) - min_of(ay1, by1);
      cw = kAligned ? cw_raw : max_of(cw_raw, T(0));
      ch = kAligned ? ch_raw : max_of(ch_raw, T(0));
      // clamp(min=0) passes the gradient where the side is >= 0 (torch's clamp).
      const T cw_pass = kAligned ? T(1) : (cw_raw >= 0 ? T(1) : T(0));
      const T ch_pass = kAligned ? T(1) : (ch_raw >= 0 ? T(1) : T(0));
      if (kMode == OverlapMode::GIoU) {
        const T enclose = cw * ch;
        const T ed = enclose + eps;
        // value = iou - (enclose - uni) / ed
        const T g_enclose = -g * (uni + eps) / (ed * ed);
        g_uni += g / ed;
        g_cw = g_enclose * ch * cw_pass;
        g_ch = g_enclose * cw * ch_pass;
      } else {
        const T diag2 = cw * cw + ch * ch + eps;
        const T dx = (ax1 + ax2) * T(0.5) - (bx1 + bx2) * T(0.5);
        const T dy = (ay1 + ay2) * T(0.5) - (by1 + by2) * T(0.5);
        const T dist2 = dx * dx + dy * dy;
        // value = iou - dist2 / diag2 (- alpha v)
        g_dx = -g * T(2) * dx / diag2;
        g_dy = -g * T(2) * dy / diag2;
        const T g_diag2 = g * dist2 / (diag2 * diag2);
        g_cw = g_diag2 * T(2) * cw * cw_pass;
        g_ch = g_diag2 * T(2) * ch * ch_pass;
        if (kMode == OverlapMode::CIoU) {
          const T delta = atan(wb / hb) - atan(wa / ha);
          const T k = ciou_k<T>();
          const T v = k * (delta * delta);
          const T alpha = v / (T(1) - iou + v + eps);
          // value -= alpha v (alpha constant): d/dv = -alpha; d v/d delta = 2 k delta
          const T g_delta = -g * alpha * T(2) * k * delta;
          // d atan(w/h)/dw = h / (w^2 + h^2), d/dh = -w / (w^2 + h^2)
          const T na = wa * wa + ha * ha, nb = wb * wb + hb * hb;
          g_wb = g_delta * hb / nb;
          g_hb = -g_delta * wb / nb;
          g_wa = -g_delta * ha / na;
          g_ha = g_delta * wa / na;
        }
      }
    }
    // iou = inter / ud:  d/d inter (direct) = 1/ud, d/d uni = -inter/ud^2
    g_inter = g_iou / ud;
    g_uni += -g_iou * inter / (ud * ud);
    // uni = area_a + area_b - inter
    g_area_a = g_uni;
    g_area_b = g_uni;
    g_inter -= g_uni;
  }

  // inter = iw * ih
  const T g_iw = pass_iw ? g_inter * ih : T(0);
  const T g_ih = pass_ih ? g_inter * iw : T(0);
  // iw_raw = min(ax2, bx2) - max(ax1, bx1)
  const T sx2 = min_share_first(ax2, bx2), sx1 = max_share_first(ax1, bx1);
  const T sy2 = min_share_first(ay2, by2), sy1 = max_share_first(ay1, by1);
  T gax1 = -g_iw * sx1, gbx1 = -g_iw * (T(1) - sx1);
  T gax2 = g_iw * sx2, gbx2 = g_iw * (T(1) - sx2);
  T gay1 = -g_ih * sy1, gby1 = -g_ih * (T(1) - sy1);
  T gay2 = g_ih * sy2, gby2 = g_ih * (T(1) - sy2);
  // areas: area = w h
  g_wa += g_area_a * ha;
  g_ha += g_area_a * wa;
  g_wb += g_area_b * hb;
  g_hb += g_area_b * wb;
  gax2 += g_wa; gax1 -= g_wa; gay2 += g_ha; gay1 -= g_ha;
  gbx2 += g_wb; gbx1 -= g_wb; gby2 += g_hb; gby1 -= g_hb;
  // enclosing sides: cw = max(ax2, bx2) - min(ax1, bx1)
  if (g_cw != T(0) || g_ch != T(0)) {
    const T ex2 = max_share_first(ax2, bx2), ex1 = min_share_first(ax1, bx1);
    const T ey2 = max_share_first(ay2, by2), ey1 = min_share_first(ay1, by1);
    gax2 += g_cw * ex2; gbx2 += g_cw * (T(1) - ex2);
    gax1 -= g_cw * ex1; gbx1 -= g_cw * (T(1) - ex1);
    gay2 += g_ch * ey2; gby2 += g_ch * (T(1) - ey2);
    gay1 -= g_ch * ey1; gby1 -= g_ch * (T(1) - ey1);
  }
  // centre offsets: dx = (ax1 + ax2) / 2 - (bx1 + bx2) / 2
  gax1 += T(0.5) * g_dx; gax2 += T(0.5) * g_dx; gbx1 -= T(0.5) * g_dx; gbx2 -= T(0.5) * g_dx;
  gay1 += T(0.5) * g_dy; gay2 += T(0.5) * g_dy; gby1 -= T(0.5) * g_dy; gby2 -= T(0.5) * g_dy;

  ga[0] += gax1; ga[1] += gay1; ga[2] += gax2; ga[3] += gay2;
  gb[0] += gbx1; gb[1] += gby1; gb[2] += gbx2; gb[3] += gby2;
}

}  // namespace pydetops
