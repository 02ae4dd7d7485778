// gpu_internal.h — host-side helpers shared by the dws/gpu.h implementations (gpu.cc, device_tensors.cc).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "dws/gpu.h"
#include "gpu/kernels.h"

namespace dws::gpu::detail {

// E_UNSUPPORTED "built without CUDA".
inline Status no_cuda() { return make_error(ErrorCode::kUnsupported, kNoCuda); }
// E_INVALID_ARGUMENT "<what> is not aligned to its <w>-byte elements" unless p is.
Status check_alignment(const void* p, size_t w, std::string_view what);
// Grows a device buffer to at least `bytes`, freeing the old one first (contents not kept).
Status reserve_device(DeviceBuffer& b, uint64_t bytes);

}  // namespace dws::gpu::detail
