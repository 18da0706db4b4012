// Helpers shared by the CPU (.cpp) and CUDA (.cu) kernels.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define PYDETOPS_HOST_DEVICE __host__ __device__
#else
#define PYDETOPS_HOST_DEVICE
#endif
