// dws/track.h — change tracking without a snapshot: a trainer that writes each new state of its published
// tensors through a ChangeTracker learns exactly which elements changed, and their old values, so a
// version can be published without diffing against a copy of the previous one (docs/python.md).
//
// Memory: O(changes) — a position (8 bytes) and the old value per changed element since the last take(),
// never a copy of a tensor. Time: one comparison per element written.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "dws/checkpoint.h"
#include "dws/patch.h"
#include "dws/status.h"

namespace dws {

class ChangeTracker {
 public:
  // Copies `values` into elements [offset_elements, offset_elements + values.size() / width) of `tensor`
  // (its dtype), and notes every element whose bits change, with its value before its first change since
  // the last take(). E_INVALID_ARGUMENT when the range does not fit, the size is not whole elements, or
  // the tensor's dtype or shape differs from earlier writes under its name.
  Status write(const TensorView& tensor, uint64_t offset_elements, std::span<const std::byte> values);

  // The changes since the last take(), against `tensors` as they are now (they must hold every write
  // since, and have been changed by nothing else): positions sorted, the target values gathered, the
  // target digests derived from `base_digests` (the tensors' digests at the last take) in O(changes). An
  // element written back to its old value is no change; tensors without changes are left out. Clears the
  // record on success. E_INVALID_ARGUMENT names a tensor written but missing from `tensors` or
  // `base_digests`.
  Result<std::vector<TrackedTensorChanges>> take(std::span<const TensorView> tensors, const TensorDigests& base_digests);

  void clear() { records_.clear(); }
  uint64_t recorded_changes() const;  // entries held (an element changed twice may count twice)
  uint64_t memory_bytes() const;      // bytes held by the record

 private:
  struct Record {
    DType dtype = DType::kU8;
    std::vector<uint64_t> shape;
    std::vector<uint64_t> positions;
    std::vector<std::byte> base_values;
    bool sorted = true;  // positions strictly ascending (no element noted twice)
    size_t compacted = 0;
  };
  static void compact(Record& r);
  std::map<std::string, Record, std::less<>> records_;
};

}  // namespace dws
