// native_plan.h — how gpu::NativeEncoder cuts a change set into symbol chunks, and where each tensor's
// mantissa section and escapes land (internal host logic; native_encoder.cc runs it around the kernels, and
// the CPU reference test runs it around a host model of them).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "codec/native.h"
#include "dws/gpu.h"

namespace dws::gpu::detail {

struct SymbolPlan {
  struct Chunk {
    uint32_t tensor = 0;
    uint64_t first_change = 0;  // global index into the change set's positions
    uint32_t count = 0;         // 1..kSymbolChunk
    bool tensor_start = false;  // the tensor's first chunk
  };
  std::vector<Chunk> chunks;  // in change order; a tensor without changes has none
};
SymbolPlan plan_symbol_chunks(std::span<const DeviceChangeSet::Entry> tensors);

// From the chunks' totals (counts[2c] mantissa bits, counts[2c + 1] escapes of chunk c): each tensor's
// mantissa section starts on a 64-bit word, its chunks' bits follow one another; escapes are in change order.
struct SymbolPlacement {
  std::vector<uint64_t> chunk_first_bit;     // within its tensor's section
  std::vector<uint64_t> chunk_first_escape;  // over all tensors
  std::vector<uint64_t> tensor_first_word;
  std::vector<uint64_t> tensor_bits;
  std::vector<uint64_t> tensor_first_escape;
  std::vector<uint64_t> tensor_escapes;
  uint64_t words = 0;    // mantissa words over all tensors
  uint64_t escapes = 0;  // escapes over all tensors
};
SymbolPlacement place_symbols(const SymbolPlan& plan, size_t tensors, std::span<const uint32_t> counts);

// Tensor `t`'s symbols from the host copies of the symbol arrays (indexed by global change), the mantissa
// words and the escapes.
codec::native::ChangeSymbols tensor_symbols(const DeviceChangeSet::Entry& entry, size_t t, const SymbolPlacement& placement,
                                            const uint8_t* gap_lengths, const uint8_t* values, const uint64_t* words,
                                            const uint64_t* escapes);

}  // namespace dws::gpu::detail
