// CPU helper of the RoI poolings' backward kernels: the RoIs of each image in
// their original order, so that a thread owning part of grad_input can visit
// exactly the RoIs that touch it, always in the same order (deterministic
// without atomics).
#pragma once
#include <cstdint>
#include <vector>

namespace pydetops {

struct RoisByImage {
  std::vector<int64_t> order;   // RoI indices grouped by image, increasing within an image
  std::vector<int64_t> offset;  // image b's RoIs are order[offset[b] .. offset[b + 1])
};

// rois: contiguous [K, 5] in acc_t; batch indices already checked to be in range.
template <typename acc_t>
RoisByImage group_rois_by_image(const acc_t* rois, int64_t num_rois, int64_t batch_size) {
  RoisByImage g;
  g.offset.assign(static_cast<size_t>(batch_size) + 1, 0);
  g.order.resize(static_cast<size_t>(num_rois));
  for (int64_t k = 0; k < num_rois; ++k) ++g.offset[static_cast<int64_t>(rois[5 * k]) + 1];
  for (int64_t b = 0; b < batch_size; ++b) g.offset[b + 1] += g.offset[b];
  std::vector<int64_t> fill(g.offset.begin(), g.offset.end() - 1);
  for (int64_t k = 0; k < num_rois; ++k) g.order[fill[static_cast<int64_t>(rois[5 * k])]++] = k;
  return g;
}

}  // namespace pydetops
