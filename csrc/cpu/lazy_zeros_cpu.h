// A CPU tensor whose storage the OS provides zero-filled on demand.
//
// For large, mostly-zero results (paste_masks: N images that are zero outside
// one box each) the cost of at::zeros / at::empty + fill is the zero fill
// itself: every page is faulted in, zeroed by the kernel, then written again
// by the fill. A fresh anonymous private mapping reads as zeros without being
// touched, and the kernel only allocates (and zeroes) the pages a kernel
// actually writes. So a kernel that writes only its non-zero regions into such
// a tensor costs the pages it writes, not the whole result.
//
// The tensor is an ordinary CPU tensor: its storage owns the mapping (munmap
// when the last reference goes), is resizable (a resize reallocates through
// the default CPU allocator and copies, like any CPU storage), and everything
// else (clone, in-place ops, .numpy(), torch.save, pin_memory, share_memory_)
// sees plain host memory. Pages never written are mapped to the shared zero
// page when read (a read fault each, no allocation) and count in the RSS only
// once written.
//
// Linux only (where this was measured); elsewhere, below the size threshold, or
// when the mapping fails, lazy_zeros_cpu returns an undefined tensor and the
// caller allocates normally and writes the zeros itself.
#pragma once
#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/Storage.h>
#include <c10/core/TensorImpl.h>

#include <cstddef>
#include <cstdint>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#define PYDETOPS_HAVE_LAZY_ZEROS 1
#else
#define PYDETOPS_HAVE_LAZY_ZEROS 0
#endif

namespace pydetops {
namespace cpu {

// Results smaller than this are allocated with at::empty and zero-filled by the
// kernel: a mapping costs two system calls and a fault per page, which does not
// pay on small outputs (and small outputs are cache-resident anyway).
constexpr int64_t kLazyZerosMinBytes = int64_t(1) << 20;

#if PYDETOPS_HAVE_LAZY_ZEROS
namespace detail {
struct LazyZerosMapping {
  void* ptr;
  size_t bytes;
};
inline void unmap_lazy_zeros(void* ctx) {
  auto* m = static_cast<LazyZerosMapping*>(ctx);
  munmap(m->ptr, m->bytes);
  delete m;
}
}  // namespace detail
#endif

// A contiguous CPU tensor of `sizes` and `dtype`, all zeros, backed by a fresh
// anonymous mapping; undefined (the caller must allocate and zero-fill itself)
// when the result is smaller than min_bytes, on platforms without it, or when
// the mapping fails.
inline at::Tensor lazy_zeros_cpu(at::IntArrayRef sizes, caffe2::TypeMeta dtype,
                                 int64_t min_bytes = kLazyZerosMinBytes) {
#if PYDETOPS_HAVE_LAZY_ZEROS
  int64_t numel = 1;
  for (const int64_t s : sizes) {
    if (s < 0 || (s != 0 && numel > INT64_MAX / s)) return at::Tensor();
    numel *= s;
  }
  const int64_t item = static_cast<int64_t>(dtype.itemsize());
  if (numel == 0 || numel > INT64_MAX / item) return at::Tensor();
  const int64_t bytes = numel * item;
  if (bytes < min_bytes) return at::Tensor();
  void* p = mmap(nullptr, static_cast<size_t>(bytes), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return at::Tensor();  // the caller's at::empty reports the failure as torch does
  auto* ctx = new (std::nothrow) detail::LazyZerosMapping{p, static_cast<size_t>(bytes)};
  if (ctx == nullptr) {
    munmap(p, static_cast<size_t>(bytes));
    return at::Tensor();
  }
  c10::DataPtr data(p, ctx, &detail::unmap_lazy_zeros, c10::Device(c10::DeviceType::CPU));
  // The default CPU allocator serves later resizes of this storage (which copy).
  c10::Storage storage(c10::Storage::use_byte_size_t(), static_cast<size_t>(bytes), std::move(data),
                       c10::GetCPUAllocator(), /*resizable=*/true);
  auto impl = c10::make_intrusive<c10::TensorImpl>(std::move(storage), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                                   dtype);
  impl->set_sizes_contiguous(sizes);
  return at::Tensor(std::move(impl));
#else
  (void)sizes;
  (void)dtype;
  (void)min_bytes;
  return at::Tensor();
#endif
}

}  // namespace cpu
}  // namespace pydetops
