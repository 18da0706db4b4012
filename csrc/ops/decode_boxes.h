#pragma once
#include <ATen/ATen.h>

#include "common/box_coding.h"

namespace pydetops {

// Calls through the dispatcher.
at::Tensor decode_boxes(const at::Tensor& rel_codes, const at::Tensor& boxes, at::ArrayRef<double> weights,
                        double clamp, at::OptionalIntArrayRef image_size);
std::tuple<at::Tensor, at::Tensor> decode_boxes_backward(const at::Tensor& grad, const at::Tensor& rel_codes,
                                                         const at::Tensor& boxes, at::ArrayRef<double> weights,
                                                         double clamp, at::OptionalIntArrayRef image_size);

// Shared by every backend: argument checks.
void check_decode_boxes_args(const at::Tensor& rel_codes, const at::Tensor& boxes, at::ArrayRef<double> weights,
                             double clamp, at::OptionalIntArrayRef image_size);

// The parameters in the compute type.
template <typename T>
coding::DecodeParams<T> make_decode_params(at::ArrayRef<double> weights, double clamp,
                                           at::OptionalIntArrayRef image_size) {
  coding::DecodeParams<T> p;
  p.wx = static_cast<T>(weights[0]);
  p.wy = static_cast<T>(weights[1]);
  p.ww = static_cast<T>(weights[2]);
  p.wh = static_cast<T>(weights[3]);
  p.clamp = static_cast<T>(clamp);
  p.clip = image_size.has_value();
  p.img_h = p.clip ? static_cast<T>((*image_size)[0]) : T(0);
  p.img_w = p.clip ? static_cast<T>((*image_size)[1]) : T(0);
  return p;
}

}  // namespace pydetops
