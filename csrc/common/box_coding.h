// Box coding (R-CNN parametrisation) and the anchor shift, written once for
// the CPU and CUDA kernels. Plain arithmetic only: no ATen, no std:: calls
// that have no device version (exp/log: std:: on the host, CUDA's overloads on the device).
//
// Boxes are (x1, y1, x2, y2); width = x2 - x1 (no "+1", as modern torchvision).
// A box's centre is x1 + 0.5 * width (the same expression and order as
// torchvision, so float32 results agree bit for bit up to exp/log rounding).
//
//   encode (targets of ground truth G relative to proposal P, weights w):
//     t_x = w_x * (G_cx - P_cx) / P_w        t_w = w_w * log(G_w / P_w)
//   decode (codes d relative to box P):
//     d_x' = d_x / w_x, d_w' = min(d_w / w_w, clamp)
//     cx = d_x' * P_w + P_cx,  w = exp(d_w') * P_w
//     x1 = cx - 0.5 * w,       x2 = cx + 0.5 * w    (then optionally clipped to [0, W])
//
// Edge cases (decode): a zero-width box P gives a zero-width box at P's centre
// for every finite code (d * 0 = 0, and exp(d_w') is finite because d_w' <= clamp; with
// clamp = inf a huge d_w overflows exp to inf and inf * 0 gives NaN, as in torchvision).
// NaN codes give NaN (min() keeps NaN, as torch.clamp does); an infinite d_x on
// a zero-width box gives NaN (inf * 0), exactly as torchvision does.
#pragma once
#include <cmath>

#include "common/macros.h"

namespace pydetops {
namespace coding {

// exp/log in the type of the argument (float stays float on host and device).
template <typename T>
PYDETOPS_HOST_DEVICE inline T exp_of(T x) {
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
  return ::exp(x);
#else
  return std::exp(x);
#endif
}

template <typename T>
PYDETOPS_HOST_DEVICE inline T log_of(T x) {
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
  return ::log(x);
#else
  return std::log(x);
#endif
}

// The exp/log that decode_box / encode_box use by default (the ones above). The CPU
// kernels pass their own (csrc/cpu/vec_math_cpu.h: same formulas, vectorisable).
struct StdMath {
  template <typename T>
  PYDETOPS_HOST_DEVICE static T exp(T x) {
    return exp_of(x);
  }
  template <typename T>
  PYDETOPS_HOST_DEVICE static T log(T x) {
    return log_of(x);
  }
};

// Clamp as torch.clamp(x, max=hi): NaN stays NaN.
template <typename T>
PYDETOPS_HOST_DEVICE inline T clamp_max(T x, T hi) {
  return x > hi ? hi : x;
}

// torch.clamp(x, lo, hi) forward: NaN stays NaN.
template <typename T>
PYDETOPS_HOST_DEVICE inline T clamp_range(T x, T lo, T hi) {
  x = x < lo ? lo : x;
  return x > hi ? hi : x;
}

// torch.clamp's gradient mask: the gradient passes where lo <= x <= hi (inclusive).
template <typename T>
PYDETOPS_HOST_DEVICE inline bool clamp_passes(T x, T lo, T hi) {
  return x >= lo && x <= hi;
}

template <typename T>
struct DecodeParams {
  T wx, wy, ww, wh;  // weights (codes are divided by them)
  T clamp;           // upper bound of d_w / w_w and d_h / w_h before exp
  bool clip;         // clip the decoded box to [0, img_w] x [0, img_h]
  T img_w, img_h;
};

// Decodes one (box, code) pair. b: box (x1, y1, x2, y2); d: code (dx, dy, dw, dh).
// Clip: whether to clip (the CPU kernels make it a compile-time constant; p.clip otherwise).
template <typename T, typename Math = StdMath>
PYDETOPS_HOST_DEVICE inline void decode_box_math(const T* b, const T* d, const DecodeParams<T>& p, bool clip,
                                                 T* out) {
  const T w = b[2] - b[0];
  const T h = b[3] - b[1];
  const T cx = b[0] + T(0.5) * w;
  const T cy = b[1] + T(0.5) * h;
  const T dx = d[0] / p.wx;
  const T dy = d[1] / p.wy;
  const T dw = clamp_max(d[2] / p.ww, p.clamp);
  const T dh = clamp_max(d[3] / p.wh, p.clamp);
  const T pcx = dx * w + cx;
  const T pcy = dy * h + cy;
  const T pw = Math::exp(dw) * w;
  const T ph = Math::exp(dh) * h;
  T x1 = pcx - T(0.5) * pw;
  T y1 = pcy - T(0.5) * ph;
  T x2 = pcx + T(0.5) * pw;
  T y2 = pcy + T(0.5) * ph;
  if (clip) {
    x1 = clamp_range(x1, T(0), p.img_w);
    y1 = clamp_range(y1, T(0), p.img_h);
    x2 = clamp_range(x2, T(0), p.img_w);
    y2 = clamp_range(y2, T(0), p.img_h);
  }
  out[0] = x1;
  out[1] = y1;
  out[2] = x2;
  out[3] = y2;
}

template <typename T>
PYDETOPS_HOST_DEVICE inline void decode_box(const T* b, const T* d, const DecodeParams<T>& p, T* out) {
  decode_box_math<T, StdMath>(b, d, p, p.clip, out);
}

// Gradient of decode_box. g: upstream gradient of (x1, y1, x2, y2).
// Writes the gradient of the code to gd[0..3] and ADDS the gradient of the box to gb[0..3]
// (a box is shared by the K codes of its row). The clamps of d_w/d_h and of the clip
// zero the gradient where they are active, as torch.clamp's backward does.
template <typename T>
PYDETOPS_HOST_DEVICE inline void decode_box_backward(const T* b, const T* d, const DecodeParams<T>& p, const T* g,
                                                     T* gd, T* gb) {
  const T w = b[2] - b[0];
  const T h = b[3] - b[1];
  const T cx = b[0] + T(0.5) * w;
  const T cy = b[1] + T(0.5) * h;
  const T dx = d[0] / p.wx;
  const T dy = d[1] / p.wy;
  const T dw_raw = d[2] / p.ww;
  const T dh_raw = d[3] / p.wh;
  const T dw = clamp_max(dw_raw, p.clamp);
  const T dh = clamp_max(dh_raw, p.clamp);
  const T ew = exp_of(dw);
  const T eh = exp_of(dh);
  T g1 = g[0], g2 = g[1], g3 = g[2], g4 = g[3];
  if (p.clip) {
    const T pcx = dx * w + cx;
    const T pcy = dy * h + cy;
    const T pw = ew * w;
    const T ph = eh * h;
    if (!clamp_passes(pcx - T(0.5) * pw, T(0), p.img_w)) g1 = T(0);
    if (!clamp_passes(pcy - T(0.5) * ph, T(0), p.img_h)) g2 = T(0);
    if (!clamp_passes(pcx + T(0.5) * pw, T(0), p.img_w)) g3 = T(0);
    if (!clamp_passes(pcy + T(0.5) * ph, T(0), p.img_h)) g4 = T(0);
  }
  // x1 = pcx - 0.5 pw, x2 = pcx + 0.5 pw with pcx = dx w + cx, pw = e w.
  const T g_pcx = g1 + g3, g_pw = T(0.5) * (g3 - g1);
  const T g_pcy = g2 + g4, g_ph = T(0.5) * (g4 - g2);
  gd[0] = g_pcx * w / p.wx;
  gd[1] = g_pcy * h / p.wy;
  gd[2] = dw_raw <= p.clamp ? g_pw * ew * w / p.ww : T(0);
  gd[3] = dh_raw <= p.clamp ? g_ph * eh * h / p.wh : T(0);
  // Through the box: cx = x1 + 0.5 (x2 - x1), w = x2 - x1.
  const T g_w = g_pcx * dx + g_pw * ew;
  const T g_h = g_pcy * dy + g_ph * eh;
  gb[0] += T(0.5) * g_pcx - g_w;
  gb[1] += T(0.5) * g_pcy - g_h;
  gb[2] += T(0.5) * g_pcx + g_w;
  gb[3] += T(0.5) * g_pcy + g_h;
}

template <typename T>
struct EncodeWeights {
  T wx, wy, ww, wh;
};

// Targets of the reference (ground-truth) box r relative to the proposal q.
template <typename T, typename Math = StdMath>
PYDETOPS_HOST_DEVICE inline void encode_box(const T* r, const T* q, const EncodeWeights<T>& wt, T* out) {
  const T pw = q[2] - q[0];
  const T ph = q[3] - q[1];
  const T pcx = q[0] + T(0.5) * pw;
  const T pcy = q[1] + T(0.5) * ph;
  const T gw = r[2] - r[0];
  const T gh = r[3] - r[1];
  const T gcx = r[0] + T(0.5) * gw;
  const T gcy = r[1] + T(0.5) * gh;
  out[0] = wt.wx * (gcx - pcx) / pw;
  out[1] = wt.wy * (gcy - pcy) / ph;
  out[2] = wt.ww * Math::log(gw / pw);
  out[3] = wt.wh * Math::log(gh / ph);
}

// Gradient of encode_box: g is the upstream gradient of the four targets;
// writes the gradients of r (gr) and q (gq).
template <typename T>
PYDETOPS_HOST_DEVICE inline void encode_box_backward(const T* r, const T* q, const EncodeWeights<T>& wt, const T* g,
                                                     T* gr, T* gq) {
  const T pw = q[2] - q[0];
  const T ph = q[3] - q[1];
  const T pcx = q[0] + T(0.5) * pw;
  const T pcy = q[1] + T(0.5) * ph;
  const T gw = r[2] - r[0];
  const T gh = r[3] - r[1];
  const T gcx = r[0] + T(0.5) * gw;
  const T gcy = r[1] + T(0.5) * gh;
  // t_x = wx (gcx - pcx) / pw ;  t_w = ww (log gw - log pw)
  const T a_x = g[0] * wt.wx / pw;  // d/d gcx ; -d/d pcx
  const T a_y = g[1] * wt.wy / ph;
  const T g_gw = g[2] * wt.ww / gw;
  const T g_gh = g[3] * wt.wh / gh;
  const T g_pw = -a_x * (gcx - pcx) / pw - g[2] * wt.ww / pw;
  const T g_ph = -a_y * (gcy - pcy) / ph - g[3] * wt.wh / ph;
  // centre = x1 + 0.5 (x2 - x1): d/dx1 = 0.5, d/dx2 = 0.5 ; width: d/dx1 = -1, d/dx2 = 1
  gr[0] = T(0.5) * a_x - g_gw;
  gr[1] = T(0.5) * a_y - g_gh;
  gr[2] = T(0.5) * a_x + g_gw;
  gr[3] = T(0.5) * a_y + g_gh;
  gq[0] = -T(0.5) * a_x - g_pw;
  gq[1] = -T(0.5) * a_y - g_ph;
  gq[2] = -T(0.5) * a_x + g_pw;
  gq[3] = -T(0.5) * a_y + g_ph;
}

// Anchor a at feature-map cell (y, x): base[a] + (x*sx, y*sy, x*sx, y*sy).
// The integer shift is first rounded to the output type (out_t) and then added in
// the compute type (acc_t), which reproduces torchvision's int64 + float tensor sum
// bit for bit in every floating dtype (float16 included).
template <typename out_t, typename acc_t>
PYDETOPS_HOST_DEVICE inline void shift_anchor(const acc_t* base, long long shift_x, long long shift_y, out_t* out) {
  const acc_t sx = static_cast<acc_t>(static_cast<out_t>(static_cast<acc_t>(shift_x)));
  const acc_t sy = static_cast<acc_t>(static_cast<out_t>(static_cast<acc_t>(shift_y)));
  out[0] = static_cast<out_t>(base[0] + sx);
  out[1] = static_cast<out_t>(base[1] + sy);
  out[2] = static_cast<out_t>(base[2] + sx);
  out[3] = static_cast<out_t>(base[3] + sy);
}

}  // namespace coding
}  // namespace pydetops
