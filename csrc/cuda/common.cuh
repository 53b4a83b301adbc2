#pragma once
// Pieces every CUDA file of fastnst shares: the torch stable-ABI includes, element conversions
// to and from fp32, the 16 x 16-thread 4 x 4 FMA micro-tile of the tiled GEMMs, and host
// helpers (current stream, SM count, launch check). Header-only, so each .cu still compiles on
// its own with `nvcc -c`.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/Exception.h>

#include <algorithm>
#include <cstdint>

#ifndef USE_CUDA
// shim.h declares this only when USE_CUDA is defined (torch's own build); the symbol is
// exported by every CUDA build of libtorch.
extern "C" AOTITorchError aoti_torch_get_current_cuda_stream(int32_t device_index,
                                                             void** ret_stream);
#endif

namespace fastnst {
namespace cuda {

// ---- element conversions -------------------------------------------------------------------
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// acc[m][n] += sum_kk a[kk][ty + 16 m] * b[kk][tx + 16 n] for kk < BK in order (one fmaf chain
// per output), a and b k-major in shared memory with row pitch PITCH; 16 x 16 threads.
template <int BK, int PITCH>
__device__ __forceinline__ void mma_tile(const float* a, const float* b, float (&acc)[4][4]) {
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
#pragma unroll
  for (int kk = 0; kk < BK; ++kk) {
    float av[4], bv[4];
#pragma unroll
    for (int m = 0; m < 4; ++m) av[m] = a[kk * PITCH + ty + 16 * m];
#pragma unroll
    for (int n = 0; n < 4; ++n) bv[n] = b[kk * PITCH + tx + 16 * n];
#pragma unroll
    for (int m = 0; m < 4; ++m)
#pragma unroll
      for (int n = 0; n < 4; ++n) acc[m][n] = fmaf(av[m], bv[n], acc[m][n]);
  }
}

// ---- host side -----------------------------------------------------------------------------
inline void check_launch(const char* op) {
  const cudaError_t err = cudaGetLastError();
  STD_TORCH_CHECK(err == cudaSuccess, op, " (cuda): kernel launch failed: ",
                  cudaGetErrorString(err));
}

inline cudaStream_t current_stream(int32_t device_index) {
  void* stream = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(device_index, &stream));
  return static_cast<cudaStream_t>(stream);
}

inline int sm_count(int32_t device_index, const char* op) {
  int n = 0;
  const cudaError_t err =
      cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device_index);
  STD_TORCH_CHECK(err == cudaSuccess, op, " (cuda): cudaDeviceGetAttribute failed: ",
                  cudaGetErrorString(err));
  return std::max(n, 1);
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace cuda
}  // namespace fastnst
