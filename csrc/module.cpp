// pydetops._C: the pybind11 module. Loading it registers every op with the
// dispatcher (the TORCH_LIBRARY blocks in ops/, cpu/, cuda/, autograd/); its
// one Python function reports how it was built.
#include <ATen/Parallel.h>
#include <pybind11/pybind11.h>

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "pydetops compiled ops (registered as torch.ops.pydetops.*)";
  m.def("build_info", []() {
    py::dict info;
    info["version"] = PYDETOPS_VERSION;
    info["torch_version"] = PYDETOPS_TORCH_VERSION;
    info["cuda"] = static_cast<bool>(PYDETOPS_WITH_CUDA);
    info["cuda_archs"] = PYDETOPS_CUDA_ARCHS;
    info["cxx_standard"] = static_cast<int>(__cplusplus / 100 % 100);  // 201703L -> 17, 202002L -> 20
#ifdef _OPENMP
    info["openmp"] = true;
#else
    info["openmp"] = false;
#endif
    info["parallel_info"] = at::get_parallel_info();
    info["num_threads"] = at::get_num_threads();
    return info;
  }, "How this extension was built: versions, CUDA, CPU parallel backend and threads.");
}
