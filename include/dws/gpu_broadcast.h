// dws/gpu_broadcast.h — the NCCL transport: a trainer rank broadcasts the changes of a step (a
// DeviceChangeSet from gpu::Differ) in buckets, and every receiver rank scatters each bucket into its GPU
// tensors as it arrives, double-buffered so that bucket k+1 is in flight while bucket k is applied.
//
// NCCL is loaded at run time (dlopen of libnccl.so.2, or $DWS_NCCL_LIBRARY): a build needs only nccl.h, and
// a process that never broadcasts needs no NCCL. Without it, or in a build without CUDA, every call returns
// E_UNSUPPORTED saying which is missing. NCCL failures are E_DEVICE with NCCL's own message.
//
// Wire protocol of one broadcast_changes (every rank computes the same plan from the same counts):
//   1. a 32-byte header from the root: magic, tensor count, fingerprint of the (dtype, numel) list, total
//      changes; every rank checks it against its own tensor list, and an all-reduce of the verdicts makes
//      every rank return the same E_INVALID_ARGUMENT when any disagrees (nothing is written);
//   2. the per-tensor change counts (8 bytes each);
//   3. the buckets (plan_buckets): each is a run of consecutive changes in the change set's global order,
//      sent as two contiguous ranges straight from the root's DeviceChangeSet (positions as uint64, then the
//      target values with the change set's own 8-byte alignment between tensors), so the root packs nothing.
// The transport trusts NCCL for integrity (it runs inside one training job); versioned, signed patches go
// through a store (dws/sync.h).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "dws/gpu.h"

namespace dws::gpu {

// Whether libnccl could be loaded (and its version, e.g. "2.28.3"); the error says why not.
Result<std::string> nccl_version();

// An ncclUniqueId: made by one process (rank 0), handed to the others out of band.
struct NcclId {
  std::array<std::byte, 128> bytes{};
};
Result<NcclId> nccl_unique_id();

// One rank's NCCL communicator and the transport's buffers, streams and events for it. Not thread-safe;
// use from one thread (each rank of a single-process group on its own thread).
class Communicator {
 public:
  // Rank `rank` of `ranks`, on the calling thread's current device (set_device first).
  static Result<Communicator> init(int ranks, int rank, const NcclId& id);
  // One communicator per device, all in this process (rank i on devices[i]).
  static Result<std::vector<Communicator>> init_all(std::span<const int> devices);

  Communicator();
  Communicator(Communicator&&) noexcept;
  Communicator& operator=(Communicator&&) noexcept;
  ~Communicator();
  int rank() const;
  int ranks() const;
  int device() const;

  struct State;  // internal
  State* state() const { return state_.get(); }

 private:
  std::unique_ptr<State> state_;
};

struct BroadcastOptions {
  uint64_t bucket_bytes = 64ull << 20;  // at most this many bytes a bucket (>= 4 KiB; a tensor may span buckets)
  // The caller's stream: the root's change set was produced on it, and scatters into `tensors` are ordered on
  // it. The call returns when every bucket has been received and its scatter enqueued on this stream.
  Stream stream = nullptr;
};

struct BroadcastStats {
  uint64_t buckets = 0;
  uint64_t bytes = 0;    // bucket bytes broadcast (positions and values)
  uint64_t changes = 0;  // changes broadcast (written into `tensors`, when given)
};

// Collective: every rank of `comm` calls it with the same root. The root passes the change set of the step
// (its positions and values are read in place; keep it unchanged until the call returns); the other ranks
// pass nullptr. Every rank that passes `tensors` (receivers must; the root may, to keep a replica) gets the
// target values written at the changed positions: the tensors, in the change set's order and shapes.
Result<BroadcastStats> broadcast_changes(Communicator& comm, int root, const DeviceChangeSet* changes,
                                         std::span<const DeviceTensor> tensors, const BroadcastOptions& options = {});

// ---- the plan, shared by all ranks (host logic, exposed for tests) ----

// Where each tensor's values start in the value arrays (8-aligned, in order; DeviceChangeSet's layout).
std::vector<uint64_t> value_layout(std::span<const DType> dtypes, std::span<const uint64_t> counts);

struct BucketSegment {
  uint32_t tensor = 0;
  uint64_t first = 0;  // tensor-local index of its first change
  uint64_t count = 0;
};
struct Bucket {
  uint64_t first_change = 0;  // global index (into the change set's positions)
  uint64_t changes = 0;
  uint64_t value_begin = 0;   // byte range of the change set's value arrays it carries
  uint64_t value_end = 0;
  std::vector<BucketSegment> segments;
  uint64_t bytes() const { return changes * sizeof(uint64_t) + (value_end - value_begin); }
  // Offset of the values in a receive buffer: after the positions, keeping the value range's alignment mod 8.
  uint64_t value_offset() const { return changes * sizeof(uint64_t) + (value_begin & 7); }
  uint64_t buffer_bytes() const { return value_offset() + (value_end - value_begin); }
};
// Splits the changes (counts per tensor) into buckets of at most bucket_bytes, in global order; every change
// is in exactly one bucket, each bucket holds at least one change.
std::vector<Bucket> plan_buckets(std::span<const DType> dtypes, std::span<const uint64_t> counts, uint64_t bucket_bytes);

}  // namespace dws::gpu
