// dws/diff.h — exact diff of two checkpoints by bit pattern.
//
// Two elements differ when their bytes differ: NaN payloads, -0.0 vs +0.0 and every other bit pattern
// count as distinct values. Element width is 1, 2, 4 or 8 bytes.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "dws/checkpoint.h"
#include "dws/status.h"

namespace dws {

// Positions (element indices, ascending) where base and target differ. Both spans must hold the same
// whole number of elem_size-byte elements; otherwise E_INVALID_ARGUMENT. threads == 0: all cores.
Result<std::vector<uint64_t>> diff_elements(std::span<const std::byte> base, std::span<const std::byte> target,
                                            size_t elem_size, size_t threads);

enum class TensorChange : uint8_t {
  kUnchanged,
  kModified,  // same dtype and shape, some elements differ: positions lists them
  kAdded,     // only in target
  kRemoved,   // only in base
  kReplaced,  // in both with a different dtype or shape: carried whole
};
std::string_view tensor_change_name(TensorChange change);

struct TensorDiff {
  std::string name;
  TensorChange change = TensorChange::kUnchanged;
  const CheckpointTensor* base = nullptr;    // null for kAdded
  const CheckpointTensor* target = nullptr;  // null for kRemoved
  std::vector<uint64_t> positions;           // kModified only
};

// Every tensor of either checkpoint, sorted by name. The pointers refer into base and target, which must
// outlive the result.
std::vector<TensorDiff> diff_checkpoints(const Checkpoint& base, const Checkpoint& target, size_t threads);

}  // namespace dws
