// cuda_status.h — CUDA runtime errors as dws Status (internal; CUDA builds only).
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "dws/status.h"

namespace dws::gpu::detail {

// E_DEVICE naming the call and the CUDA error. Resets the thread's last error, so that a failed call does
// not surface again in a later, unrelated check (CUB's launches read it).
inline Status cuda_error(const char* call, cudaError_t e) {
  (void)cudaGetLastError();
  return make_error(ErrorCode::kDevice, std::string(call) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

}  // namespace dws::gpu::detail

#define DWS_CUDA(call)                                                                              \
  do {                                                                                              \
    const cudaError_t dws_cuda_e_ = (call);                                                         \
    if (dws_cuda_e_ != cudaSuccess) return ::dws::gpu::detail::cuda_error(#call, dws_cuda_e_);     \
  } while (0)
