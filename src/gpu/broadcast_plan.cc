// broadcast_plan.cc — the bucket plan of the NCCL transport (dws/gpu_broadcast.h): host logic that every
// rank runs on the same counts, so that all agree on every bucket's size without sending it.
#include <algorithm>

#include "dws/gpu_broadcast.h"
#include "gpu/broadcast_internal.h"

namespace dws::gpu {

std::vector<uint64_t> value_layout(std::span<const DType> dtypes, std::span<const uint64_t> counts) {
  std::vector<uint64_t> at(dtypes.size());
  uint64_t bytes = 0;
  for (size_t i = 0; i < dtypes.size(); ++i) {
    bytes = (bytes + 7) / 8 * 8;  // as Differ::diff lays them out
    at[i] = bytes;
    bytes += counts[i] * dtype_size_bytes(dtypes[i]);
  }
  return at;
}

std::vector<Bucket> plan_buckets(std::span<const DType> dtypes, std::span<const uint64_t> counts, uint64_t bucket_bytes) {
  const std::vector<uint64_t> value_byte = value_layout(dtypes, counts);
  std::vector<Bucket> buckets;
  Bucket cur;
  auto close = [&] {
    if (cur.changes > 0) buckets.push_back(std::move(cur));
    cur = Bucket();
  };
  uint64_t global = 0;
  for (size_t i = 0; i < dtypes.size(); ++i) {
    const uint64_t w = dtype_size_bytes(dtypes[i]);
    uint64_t j = 0;
    while (j < counts[i]) {
      const uint64_t at = value_byte[i] + j * w;  // where this tensor's next value sits
      if (cur.changes == 0) {
        cur.first_change = global;
        cur.value_begin = at;
      }
      const uint64_t used = cur.changes * sizeof(uint64_t) + (at - cur.value_begin) + (cur.value_begin & 7);
      uint64_t k = used < bucket_bytes ? std::min(counts[i] - j, (bucket_bytes - used) / (sizeof(uint64_t) + w)) : 0;
      if (k == 0) {
        if (cur.changes > 0) {
          close();
          continue;
        }
        k = 1;  // bucket_bytes is at least one change: cannot happen above 4 KiB, kept for safety
      }
      cur.segments.push_back({static_cast<uint32_t>(i), j, k});
      cur.changes += k;
      cur.value_end = at + k * w;
      j += k;
      global += k;
      if (j < counts[i]) close();  // the tensor goes on in the next bucket: this one is full
    }
  }
  close();
  return buckets;
}

namespace detail {

void bucket_chunks(const Bucket& b, std::span<const DType> dtypes, std::span<const uint64_t> value_byte,
                   std::span<void* const> tensors, const std::byte* slot, std::vector<ScatterChunk>& out) {
  uint64_t change = 0;
  for (const BucketSegment& seg : b.segments) {
    const uint64_t w = dtype_size_bytes(dtypes[seg.tensor]);
    const uint64_t values_at = b.value_offset() + (value_byte[seg.tensor] + seg.first * w - b.value_begin);
    add_scatter_chunks(tensors[seg.tensor], dtypes[seg.tensor], codec::ChangeOp::kSet,
                       reinterpret_cast<const uint64_t*>(slot) + change, slot + values_at, seg.count, out);
    change += seg.count;
  }
}

}  // namespace detail

}  // namespace dws::gpu
