// change_sink.h — validation of decoded positions before they reach a sink (internal, shared by codecs).
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "codec/codecs.h"

namespace dws::codec {

inline constexpr size_t kSinkBatch = 1 << 16;  // changes per sink call

// Collects decoded positions, checks each (in range, strictly ascending) and hands them to the sink in
// batches together with their values.
class PositionChecker {
 public:
  // expected_count only sizes the batch buffer (small tensors must not pay for a full batch).
  PositionChecker(uint64_t numel, const ChangeSink& sink, size_t elem_size, uint64_t expected_count = kSinkBatch)
      : numel_(numel), sink_(sink), w_(elem_size) {
    batch_.reserve(static_cast<size_t>(std::min<uint64_t>(expected_count, kSinkBatch)));
  }
  Status push(uint64_t p) {
    if (p >= numel_) {
      return make_error(ErrorCode::kPositions, "position " + std::to_string(p) + " out of range for " + std::to_string(numel_) + " elements");
    }
    if (count_ > 0 && p <= last_) {
      return make_error(ErrorCode::kPositions, "position " + std::to_string(p) + " after " + std::to_string(last_) + " (unsorted or duplicate)");
    }
    last_ = p;
    ++count_;
    batch_.push_back(p);
    return Status::Ok();
  }
  bool full() const { return batch_.size() == kSinkBatch; }
  // Hands the queued positions and the first pending()*elem_size bytes of `values` to the sink.
  Status flush(std::span<const std::byte> values) {
    if (batch_.empty()) return Status::Ok();
    Status st = sink_(batch_, values.first(batch_.size() * w_));
    batch_.clear();
    return st;
  }
  size_t pending() const { return batch_.size(); }
  std::span<const uint64_t> pending_positions() const { return batch_; }
  uint64_t count() const { return count_; }

 private:
  uint64_t numel_;
  const ChangeSink& sink_;
  size_t w_;
  std::vector<uint64_t> batch_;
  uint64_t last_ = 0;
  uint64_t count_ = 0;
};

}  // namespace dws::codec
