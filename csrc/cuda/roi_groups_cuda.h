// CUDA helper of the RoI ops' deterministic backward kernels (header only, so
// not compiled on its own): the RoIs of each image in increasing order, built
// on the device (stable sort + searchsorted: no device-to-host copy).
#pragma once
#include <ATen/ATen.h>

#include <utility>

namespace pydetops {

// r: [K, 5] rois (batch indices already checked: truncated, each in [0, N)).
// Returns (order [K] int64: RoI indices grouped by image, increasing within an
// image; offsets [N + 1] int64: image n's RoIs are order[offsets[n], offsets[n + 1])).
inline std::pair<at::Tensor, at::Tensor> cuda_rois_by_image(const at::Tensor& r, int64_t N) {
  const at::Tensor batch = r.select(1, 0).trunc().to(at::kLong);
  const auto sorted = at::sort(batch, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor offsets =
      at::searchsorted(std::get<0>(sorted).contiguous(), at::arange(N + 1, batch.options())).contiguous();
  return {std::get<1>(sorted).contiguous(), offsets};
}

}  // namespace pydetops
