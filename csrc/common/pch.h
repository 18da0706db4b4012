// Precompiled header for the C++ (non-CUDA) sources: the torch headers every
// kernel file includes. Only a build-speed device; each file still includes
// what it uses.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/autograd.h>
