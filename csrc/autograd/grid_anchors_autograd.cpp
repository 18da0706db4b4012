// grid_anchors is not differentiable: anchors are constants of the detector.
// Registering autograd's "not implemented" kernel makes a backward through it an
// explicit error (instead of silently treating base_anchors as constant).
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

TORCH_LIBRARY_IMPL(pydetops, Autograd, m) {
  m.impl("grid_anchors", torch::autograd::autogradNotImplementedFallback());
}
