// dws/gpu.h — the GPU path: exact diff with stream compaction on the device, and in-place apply of a
// patch into device tensors, in time proportional to the changes.
//
// Every kernel has a CPU reference (diff_elements, codec::apply_operands) and must match it bit for bit.
// A build without CUDA (DWS_CUDA=OFF, or no toolkit found) keeps this API; every call then returns
// E_UNSUPPORTED "built without CUDA". CUDA failures are E_DEVICE with the CUDA error's name.
//
// Pointers are device pointers, or pinned host memory the device can address (cudaHostAlloc with
// cudaHostAllocMapped, under unified addressing): a trainer may keep its snapshot in host memory.
// Streams are cudaStream_t passed as void* so that this header needs no CUDA headers; nullptr is the
// legacy default stream. Calls are ordered on the stream given; those that return host data synchronize it.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "dws/checkpoint.h"
#include "dws/dtype.h"
#include "dws/patch.h"
#include "dws/status.h"

namespace dws::gpu {

using Stream = void*;  // a cudaStream_t

bool built_with_cuda();

struct DeviceInfo {
  int ordinal = 0;
  std::string name;
  int multiprocessors = 0;
  uint64_t memory_bytes = 0;
  int compute_major = 0;
  int compute_minor = 0;
};
// Number of CUDA devices visible (0 when the driver finds none).
Result<int> device_count();
Result<DeviceInfo> device_info(int ordinal);
// Makes `ordinal` the calling thread's current device.
Status set_device(int ordinal);

// A tensor in device memory, not owned.
struct DeviceTensor {
  void* data = nullptr;
  DType dtype = DType::kU8;
  uint64_t numel = 0;
};

// Device memory owned by this object (cudaMalloc / cudaFree).
class DeviceBuffer {
 public:
  static Result<DeviceBuffer> allocate(uint64_t bytes);
  DeviceBuffer() = default;
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();
  void* data() const { return data_; }
  uint64_t size_bytes() const { return bytes_; }

 private:
  void* data_ = nullptr;
  uint64_t bytes_ = 0;
};

// Page-locked host memory owned by this object (cudaMallocHost / cudaFreeHost): the staging that lets
// copies to and from the device run at the link's speed and asynchronously.
class PinnedBuffer {
 public:
  static Result<PinnedBuffer> allocate(uint64_t bytes);
  PinnedBuffer() = default;
  PinnedBuffer(PinnedBuffer&& other) noexcept;
  PinnedBuffer& operator=(PinnedBuffer&& other) noexcept;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  ~PinnedBuffer();
  void* data() const { return data_; }
  uint64_t size_bytes() const { return bytes_; }
  // Grows to at least `bytes` (contents not kept); never shrinks.
  Status reserve(uint64_t bytes);

 private:
  void* data_ = nullptr;
  uint64_t bytes_ = 0;
};

// Copies between host and device (either direction, or device to device) and waits for the copy.
Status copy(void* dst, const void* src, uint64_t bytes, Stream stream);
Status synchronize(Stream stream);

// One tensor to diff: numel elements of dtype at base and at target.
struct DiffInput {
  const void* base = nullptr;
  const void* target = nullptr;
  DType dtype = DType::kU8;
  uint64_t numel = 0;
};

// The changes of several tensors, resident on the device in one set of buffers: per tensor, ascending
// tensor-local positions and the base and target values there. Produced by Differ; a set passed back to
// Differ::diff is refilled in place, its buffers reused while large enough (they only grow).
struct DeviceChangeSet {
  struct Entry {
    DType dtype = DType::kU8;
    uint64_t numel = 0;         // elements of the tensor
    uint64_t first_change = 0;  // its first entry in `positions`
    uint64_t count = 0;         // its changed elements
    uint64_t value_byte = 0;    // where its values start in base_values and target_values (8-aligned)
  };
  std::vector<Entry> tensors;  // in the order of the diff's inputs
  uint64_t total = 0;          // changes over all tensors
  DeviceBuffer positions;      // total uint64_t
  DeviceBuffer base_values;
  DeviceBuffer target_values;
};

// The changes of a DeviceChangeSet copied to page-locked host memory (three transfers, one per array),
// viewed per tensor. Refilled in place by Differ::to_host, reusing its buffers.
class HostChangeSet {
 public:
  size_t tensors() const { return entries_.size(); }
  uint64_t total() const { return total_; }
  std::span<const uint64_t> positions(size_t tensor) const;
  std::span<const std::byte> base_values(size_t tensor) const;
  std::span<const std::byte> target_values(size_t tensor) const;

 private:
  friend class Differ;
  std::vector<DeviceChangeSet::Entry> entries_;
  uint64_t total_ = 0;
  PinnedBuffer positions_, base_values_, target_values_;
};

// Exact diff on the device (bitwise, like diff_elements) of many tensors at once. Pass 1, one launch over
// the tiles of all tensors, reads base and target once and writes a bitmask of changed elements and a count
// per tile; a scan places every tile's changes; pass 2, one launch, reads the bitmask alone and writes
// positions in ascending order and gathers the values. One host synchronization per call (to size the
// outputs). Keeps its scratch between calls; one Differ per thread.
class Differ {
 public:
  Differ();
  ~Differ();
  Differ(Differ&&) noexcept;
  Differ& operator=(Differ&&) noexcept;

  // Pointers must be aligned to their elements (16-byte alignment takes the vectorized path).
  Result<DeviceChangeSet> diff(std::span<const DiffInput> tensors, Stream stream);
  // The same into `out`, reusing its device buffers (a trainer diffing every step allocates nothing once
  // they are large enough). On error `out` is left empty.
  Status diff(std::span<const DiffInput> tensors, Stream stream, DeviceChangeSet& out);
  // Copies only the changes to the host, into `out`'s pinned buffers (grown as needed); synchronizes.
  static Status to_host(const DeviceChangeSet& changes, HostChangeSet& out, Stream stream);

 private:
  struct Scratch;
  std::unique_ptr<Scratch> scratch_;
};

// The native codec (docs/patch-format.md §4.1) with its per-change half on the device: for every change of
// a DeviceChangeSet, the gap's bit length and mantissa bits, the value symbol and any escape are computed
// where the changes are, and only they reach the host (2 bytes a change plus the mantissa bits and escapes,
// instead of the 8 + 2w bytes of positions and values). The host finishes each tensor (models, rANS, the
// layout choice). Payloads are byte for byte what the CPU encoder writes for the same changes
// (create_patch_from_changes), so every decoder reads them. Keeps its buffers between calls; one per thread.
class NativeEncoder {
 public:
  NativeEncoder();
  ~NativeEncoder();
  NativeEncoder(NativeEncoder&&) noexcept;
  NativeEncoder& operator=(NativeEncoder&&) noexcept;

  // One native payload per tensor of `changes`, in its order (the empty payload for a tensor without
  // changes). Two launches and two synchronizations of `stream`.
  Result<std::vector<std::vector<std::byte>>> encode(const DeviceChangeSet& changes, Stream stream);
  // Bytes the last encode() copied from the device.
  uint64_t last_host_bytes() const;

 private:
  struct Scratch;
  std::unique_ptr<Scratch> scratch_;
};

// Writes the target values of `changes` into `tensors` (a snapshot kept on the device or in pinned host
// memory; the same order and shapes as the diff's inputs), bringing it from base to target in O(changes).
// One launch for all tensors (chunks of changes, each within one tensor). Asynchronous on `stream`.
Status apply_changes(std::span<const DeviceTensor> tensors, const DeviceChangeSet& changes, Stream stream);

struct ApplyTensorStats {
  uint64_t changes = 0;         // elements written by scatter
  uint64_t uploaded_bytes = 0;  // host-to-device bytes (operands and positions, or the whole tensor)
};

// Applies one tensor of a patch to a device tensor in place. The payload is decoded on the host, fully and
// with every check of the CPU path, before anything is written: the device receives positions and operands
// (new values, XOR masks or native key distances) and a kernel scatters them where the tensor lives. Whole
// tensors (full encoding) are copied. Returns when the tensor is written. Payload hashes are the caller's to
// check (Patch::verify_payload_hashes); the native class layout, which finds positions by scanning the
// base, is E_UNSUPPORTED here.
Result<ApplyTensorStats> apply_tensor(const Patch& patch, const PatchTensor& tensor, const DeviceTensor& dst,
                                      Stream stream);

// ---- model tensors on the device: the trainer's tracker and the receiver's apply (python/dws uses both) ----

// A named tensor in device memory (or pinned host memory), not owned; `data` aligned to its elements.
struct NamedDeviceTensor {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<uint64_t> shape;
  void* data = nullptr;
  uint64_t numel() const;
};

// The trainer side for weights on the device: keeps a snapshot of the last published state (in device
// memory, or in pinned host memory to spare the device's) and yields each version's changes as a
// ChangeTracker does (TrackedTensorChanges, for create_patch_from_changes), found by the device diff. Only
// the changes reach the host; target digests are derived in O(changes) from the changed 8-byte words,
// which one gather reads from the snapshot. Calls are ordered on the stream given and return when done.
class DeviceChangeTracker {
 public:
  enum class Memory { kDevice, kPinnedHost };
  explicit DeviceChangeTracker(Memory snapshot_memory = Memory::kDevice);
  ~DeviceChangeTracker();
  DeviceChangeTracker(DeviceChangeTracker&&) noexcept;
  DeviceChangeTracker& operator=(DeviceChangeTracker&&) noexcept;

  // Starts over from `tensors` as they are now: copies them into the snapshot and returns their tensor
  // digests, computed on the host from one copy of each tensor (O(model)). Names must be unique.
  Result<TensorDigests> reset(std::span<const NamedDeviceTensor> tensors, Stream stream);
  // The changes of `tensors` since the last reset() or take(), tensors without changes left out, and the
  // snapshot brought to their state. `tensors` must match reset's in order, names, dtypes and shapes
  // (E_INVALID_ARGUMENT otherwise). On any error the tracker forgets its snapshot: reset() again.
  Result<std::vector<TrackedTensorChanges>> take(std::span<const NamedDeviceTensor> tensors, Stream stream);

  bool has_snapshot() const;
  const TensorDigests& digests() const;  // of the snapshot's tensors
  uint64_t snapshot_bytes() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// apply_patch_to_tensors for device tensors: same contract (the caller vouches for `digests`, each must
// equal the patch's base digest; every result is checked against its target digest before anything is
// written, so a refused patch leaves every tensor untouched; E_UNSUPPORTED for a patch that adds, removes or
// re-shapes tensors). Payloads are decoded on the host into operands; the changed words are gathered from
// the device to check the digests in O(changes); then one scatter writes every change. Native's class layout
// needs the whole base: E_UNSUPPORTED (reload such a tensor whole). Returns the elements written.
Result<uint64_t> apply_patch_to_device_tensors(const Patch& patch, std::span<const NamedDeviceTensor> tensors,
                                               TensorDigests& digests, Stream stream);

}  // namespace dws::gpu
