// The per-candidate steps of detection_postprocess, written once for the CPU
// and CUDA kernels: decode (coding::decode_box, clipped to the image), round to
// the codes' dtype (what decode_boxes returns), and the min-size test of
// remove_small_boxes (width and height, in the boxes' dtype, >= min_size).
#pragma once
#include "common/box_coding.h"
#include "common/macros.h"

namespace pydetops {
namespace postprocess {

// anchor, code: 4 values each (already in the codes' dtype in_t). Writes the
// decoded, clipped box (rounded to in_t, held in acc_t) and returns whether it
// passes the size test. Math: exp/log policy, the one decode_boxes uses on the same
// backend (vecmath::CpuMath on the CPU), so the boxes equal decode_boxes' bit for bit.
template <typename in_t, typename acc_t, typename Math = coding::StdMath>
PYDETOPS_HOST_DEVICE inline bool decode_candidate(const in_t* anchor, const in_t* code,
                                                  const coding::DecodeParams<acc_t>& p, acc_t min_size,
                                                  acc_t* out) {
  acc_t b[4], d[4], r[4];
  for (int j = 0; j < 4; ++j) {
    b[j] = static_cast<acc_t>(anchor[j]);
    d[j] = static_cast<acc_t>(code[j]);
  }
  coding::decode_box_math<acc_t, Math>(b, d, p, p.clip, r);
  for (int j = 0; j < 4; ++j) out[j] = static_cast<acc_t>(static_cast<in_t>(r[j]));
  const acc_t w = static_cast<acc_t>(static_cast<in_t>(out[2] - out[0]));
  const acc_t h = static_cast<acc_t>(static_cast<in_t>(out[3] - out[1]));
  return w >= min_size && h >= min_size;
}

}  // namespace postprocess
}  // namespace pydetops
