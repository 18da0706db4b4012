// The sigmoid focal loss (Lin et al. 2017) of one (logit x, target t) pair and
// its gradient, written once for the CPU and CUDA kernels, term by term as
// torchvision.ops.sigmoid_focal_loss computes it:
//   p    = sigmoid(x)
//   ce   = binary_cross_entropy_with_logits(x, t) = (1 - t) x - log_sigmoid(x),
//          log_sigmoid(x) = min(x, 0) - log1p(exp(-|x|))
//   q    = 1 - p_t,  p_t = p t + (1 - p)(1 - t)
//   loss = ce q^gamma, times alpha_t = alpha t + (1 - alpha)(1 - t) when alpha >= 0.
// Gradient (alpha_t = 1 and its term dropped when alpha < 0):
//   d/dx = alpha_t [(p - t) q^gamma + ce dpow (1 - 2t) p (1 - p)]
//   d/dt = alpha_t [-x q^gamma + ce dpow (1 - 2p)] + (2 alpha - 1) ce q^gamma
// with dpow = gamma q^(gamma - 1), taken as 0 when gamma == 0 (torch's pow
// backward for a zero exponent).
#pragma once
#include <cmath>

#include "common/macros.h"

namespace pydetops {
namespace focal {

template <typename T>
PYDETOPS_HOST_DEVICE inline T exp_(T x) {
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
  return ::exp(x);
#else
  return std::exp(x);
#endif
}
template <typename T>
PYDETOPS_HOST_DEVICE inline T log1p_(T x) {
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
  return ::log1p(x);
#else
  return std::log1p(x);
#endif
}
template <typename T>
PYDETOPS_HOST_DEVICE inline T pow_(T x, T y) {
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
  return ::pow(x, y);
#else
  return std::pow(x, y);
#endif
}

// x^gamma with the two exponents detectors use computed exactly (torch's pow
// special-cases 2 as x * x too).
template <typename T>
PYDETOPS_HOST_DEVICE inline T pow_gamma(T q, T gamma) {
  if (gamma == T(2)) return q * q;
  if (gamma == T(1)) return q;
  if (gamma == T(0)) return T(1);
  return pow_(q, gamma);
}

template <typename T>
struct Terms {
  T p, ce, q, mod;
};

// From e = exp(-|x|) and l = log1p(e), which a caller may compute in bulk
// (the CPU kernels take them from torch's vectorised exp and log1p).
template <typename T>
PYDETOPS_HOST_DEVICE inline Terms<T> terms_el(T x, T t, T gamma, T e, T l) {
  Terms<T> r;
  r.p = x >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
  const T log_sig = (x < T(0) ? x : T(0)) - l;
  r.ce = (T(1) - t) * x - log_sig;
  const T p_t = r.p * t + (T(1) - r.p) * (T(1) - t);
  r.q = T(1) - p_t;
  r.mod = pow_gamma(r.q, gamma);
  return r;
}

template <typename T>
PYDETOPS_HOST_DEVICE inline Terms<T> terms(T x, T t, T gamma) {
  const T e = exp_(x < T(0) ? x : -x);
  return terms_el(x, t, gamma, e, log1p_(e));
}

template <typename T>
PYDETOPS_HOST_DEVICE inline T alpha_t_of(T t, T alpha) {
  return alpha >= T(0) ? alpha * t + (T(1) - alpha) * (T(1) - t) : T(1);
}

template <typename T>
PYDETOPS_HOST_DEVICE inline T loss_of_terms(const Terms<T>& r, T t, T alpha) {
  return alpha_t_of(t, alpha) * (r.ce * r.mod);
}

template <typename T>
PYDETOPS_HOST_DEVICE inline T loss(T x, T t, T alpha, T gamma) {
  return loss_of_terms(terms(x, t, gamma), t, alpha);
}

// g: the upstream gradient of this element's loss. Writes d/dx and d/dt.
template <typename T>
PYDETOPS_HOST_DEVICE inline void backward_of_terms(const Terms<T>& r, T x, T t, T alpha, T gamma, T g, T* gx, T* gt) {
  const T dpow = gamma == T(0) ? T(0) : (gamma == T(2) ? T(2) * r.q : gamma * pow_(r.q, gamma - T(1)));
  const T at = alpha_t_of(t, alpha);
  const T dx = (r.p - t) * r.mod + r.ce * dpow * (T(1) - T(2) * t) * (r.p * (T(1) - r.p));
  T dt = at * (-x * r.mod + r.ce * dpow * (T(1) - T(2) * r.p));
  if (alpha >= T(0)) dt += (T(2) * alpha - T(1)) * r.ce * r.mod;
  *gx = g * at * dx;
  *gt = g * dt;
}

template <typename T>
PYDETOPS_HOST_DEVICE inline void loss_backward(T x, T t, T alpha, T gamma, T g, T* gx, T* gt) {
  backward_of_terms(terms(x, t, gamma), x, t, alpha, gamma, g, gx, gt);
}

}  // namespace focal
}  // namespace pydetops
