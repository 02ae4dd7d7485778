// broadcast_internal.h — how a receiver turns one bucket in its receive slot into scatter chunks
// (internal; broadcast.cc uses it, and the CPU reference test runs it on host memory).
#pragma once

#include <span>
#include <vector>

#include "dws/gpu_broadcast.h"
#include "gpu/kernels.h"

namespace dws::gpu::detail {

// Chunks writing bucket `b` (received at `slot`) into `tensors` (data pointers, in the plan's order).
// Segments are consecutive changes: positions follow one another in the slot; values keep the change
// set's layout (value_byte), shifted by the bucket's value_begin.
void bucket_chunks(const Bucket& b, std::span<const DType> dtypes, std::span<const uint64_t> value_byte,
                   std::span<void* const> tensors, const std::byte* slot, std::vector<ScatterChunk>& out);

}  // namespace dws::gpu::detail
