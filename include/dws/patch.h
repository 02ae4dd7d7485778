// dws/patch.h — patch format v2: create, read, verify and apply (docs/patch-format.md is normative).
//
// A patch is a safetensors file. Its "__metadata__" holds "dws.format" = "dws-patch",
// "dws.format_version" = "2" and "dws.patch" = a JSON document naming the base and target state digests,
// the target's layout, and for every changed tensor its dtype, shape, encoding, change count, base and
// target digests and the payload tensors (plain safetensors tensors in the same file) that encode it.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dws/checkpoint.h"
#include "dws/diff.h"
#include "dws/digest.h"
#include "dws/encoding.h"
#include "dws/safetensors.h"
#include "dws/status.h"

namespace dws {

inline constexpr uint32_t kPatchFormatVersion = 2;  // 2: additive tensor digests (1: XXH3-128)

struct PatchTensor {
  std::string name;
  TensorChange change = TensorChange::kModified;  // kModified, kAdded or kReplaced
  Encoding encoding = Encoding::kFull;
  DType dtype = DType::kU8;  // the target tensor's
  std::vector<uint64_t> shape;
  uint64_t changes = 0;            // changed elements (all elements for kFull)
  DType index_dtype = DType::kU8;  // positions' dtype (indices, gaps, gaps_zstd)
  std::optional<Digest128> base_digest;  // tensor digest (dws/digest.h) of the base tensor (kModified, kReplaced)
  Digest128 target_digest;               // tensor digest of the target tensor
  Digest128 payload_hash;                // XXH3-128 of the payload tensors' bytes, concatenated in order
  std::vector<std::string> payload_names;
  std::vector<const TensorInfo*> payloads;  // resolved in the patch file, aligned with payload_names
  uint64_t numel() const;
  uint64_t payload_bytes() const;
};

struct PatchRemoved {
  std::string name;
  Digest128 base_digest;
};

struct PatchHeader {
  uint32_t format_version = kPatchFormatVersion;
  Encoding encoding = Encoding::kGapsZstd;  // requested encoding (added/replaced tensors are kFull)
  Digest128 base_state_digest;
  Digest128 target_state_digest;
  std::vector<PatchTensor> tensors;  // sorted by name
  std::vector<PatchRemoved> removed;
  // Target layout: file kind, shards, per-shard metadata and tensor order. TensorSpec dtype/shape are
  // filled only for tensors the patch carries; the rest come from the base at apply time.
  CheckpointLayout target_layout;
  const PatchTensor* find(std::string_view name) const;
};

class Patch {
 public:
  // Maps and validates the file structure and metadata (no payload hashing or decoding yet).
  static Result<Patch> open(const std::string& path);
  // The same from bytes in memory (the patch keeps a copy); used by fuzzers and tests.
  static Result<Patch> from_bytes(std::span<const std::byte> bytes);

  Patch() = default;
  Patch(Patch&&) noexcept = default;
  Patch& operator=(Patch&&) noexcept = default;
  Patch(const Patch&) = delete;  // PatchTensor::payloads point into this object's container
  Patch& operator=(const Patch&) = delete;

  const PatchHeader& header() const { return header_; }
  const SafetensorsHeader& container() const { return container_; }  // the file as plain safetensors
  std::span<const std::byte> payload(const PatchTensor& tensor, size_t k) const;
  uint64_t file_size_bytes() const { return bytes_.size(); }

  // Checks every payload hash (E_PAYLOAD_HASH names the first bad tensor).
  Status verify_payload_hashes(size_t threads) const;
  // verify_payload_hashes, then decodes every tensor that needs no base values and checks every position;
  // xor_zstd tensors need the base and are checked at apply time.
  Status verify(size_t threads) const;

 private:
  static Result<Patch> parse(std::shared_ptr<const void> owner, std::span<const std::byte> bytes);
  std::shared_ptr<const void> owner_;  // keeps bytes_ alive (a mapping or a copy)
  std::span<const std::byte> bytes_;
  SafetensorsHeader container_;
  PatchHeader header_;
};

// The positions (ascending) a patch writes in one of its tensors, decoded without the base: every
// element for a tensor carried whole; E_UNSUPPORTED for native's class layout, which finds positions by
// scanning the base; E_NOT_FOUND when the patch does not change the tensor. Payloads are decoded as
// hostile input but not hashed: call verify_payload_hashes first for a patch from elsewhere.
Result<std::vector<uint64_t>> patch_positions(const Patch& patch, std::string_view tensor);

struct CreatePatchOptions {
  Encoding encoding = Encoding::kAuto;  // per tensor the smallest of native, xor_zstd, full
  size_t threads = 0;  // 0: all cores
  int zstd_level = 1;  // peer encodings compress at level 1, as slime does
  // native: also try coding positions per class of the base value (its exponent): ~25% smaller on AdamW
  // steps, but encoding and every apply then scan whole base tensors, O(elements) instead of O(changes).
  bool class_positions = false;
  // Tensor digests of the base the caller vouches for (e.g. the publisher's snapshot, as pull recorded
  // them). When they name every base tensor the base is not hashed; wrong ones yield a patch that every
  // receiver refuses. Target digests are always derived from the base's and the changes.
  const TensorDigests* base_digests = nullptr;
};

struct PatchStats {
  uint64_t tensors = 0;           // tensors in base ∪ target
  uint64_t changed_tensors = 0;   // modified + added + replaced
  uint64_t removed_tensors = 0;
  uint64_t changes = 0;           // changed elements over all tensors (added/replaced count whole)
  uint64_t elements = 0;          // elements of the target
  uint64_t target_bytes = 0;      // tensor bytes of the target
  uint64_t payload_bytes = 0;     // bytes of payload tensors
  uint64_t patch_file_bytes = 0;  // the whole patch file, header included
};

// Diffs target against base and writes the patch atomically to patch_path (replacing it if present).
Result<PatchStats> create_patch(const Checkpoint& base, const Checkpoint& target, const std::string& patch_path,
                                const CreatePatchOptions& options);

// One tensor's changes since a base as a change tracker recorded them (dws/track.h), instead of found by
// diffing two checkpoints.
struct TrackedTensorChanges {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<uint64_t> shape;
  std::vector<uint64_t> positions;       // ascending and unique: the elements whose bits changed
  std::vector<std::byte> base_values;    // the base's element at each position
  std::vector<std::byte> target_values;  // the target's element at each position (≠ the base's)
  Digest128 base_digest;                 // tensor digest of the base tensor
  Digest128 target_digest;               // tensor digest of the target tensor
};

// Writes the patch that takes a base to a target when only the changes are at hand (no base or target
// checkpoint): `layout` is the checkpoint's layout, base and target alike (every TensorSpec's dtype and
// shape filled; a tracked patch never adds, removes, re-shapes or re-types tensors), `base_digests` the
// tensor digest of every tensor of the layout, and `changed` the tensors that changed. O(changes): tensors
// are encoded with the native codec (options.encoding kAuto or kNative; the dense encodings need whole
// tensors, E_UNSUPPORTED), without its class layout (it needs the whole base). Inputs are checked as
// hostile (positions sorted and in range, value sizes, digests and dtypes agree with the layout).
Result<PatchStats> create_patch_from_changes(const CheckpointLayout& layout, const TensorDigests& base_digests,
                                             std::span<const TrackedTensorChanges> changed, const std::string& patch_path,
                                             const CreatePatchOptions& options);

struct ApplyOptions {
  size_t threads = 0;      // 0: all cores
  bool overwrite = false;  // apply_patch: replace an existing output
  // Tensor digests of the base that the caller vouches for (dws pull keeps them beside the checkpoint and
  // trusts them only while its files are untouched). When they name every base tensor the base is not
  // rescanned, so the in-place apply reads and checks in O(tensors + changes); otherwise apply computes
  // them, reading the whole base. Wrong digests make the apply refuse or, worse, certify a base that
  // differs from what the patch expects, so pass only digests you recorded after a verified write.
  const TensorDigests* base_digests = nullptr;
};

struct ApplyStats {
  uint64_t tensors_patched = 0;   // modified tensors scattered into
  uint64_t tensors_written = 0;   // tensors written whole (added, replaced, full)
  uint64_t tensors_removed = 0;
  uint64_t changes = 0;           // elements written by scatter
  bool rewrote_files = false;     // in place: the layout changed, so files were rewritten and swapped in
  std::string target_state_digest;
  TensorDigests target_digests;   // every tensor of the result, verified; feed to the next apply
};

// Applies the patch to the checkpoint at base_path and writes the result to out_path (a file or, when the
// target is sharded, a directory). Validates everything first — payload hashes, the base state digest,
// each touched tensor's base digest, every position — and checks every written tensor against its target
// digest; on any failure out_path is not created (or, with overwrite, left as it was).
Result<ApplyStats> apply_patch(const std::string& base_path, const Patch& patch, const std::string& out_path,
                               const ApplyOptions& options);

// Applies the patch to the checkpoint in place, crash-safely. Same validation as apply_patch, all of it
// before the first write; then the changes are written to a redo journal, which is committed atomically
// and replayed into the checkpoint. A crash (kill -9, power loss) leaves either the old checkpoint (no
// committed journal) or a committed journal that recover_checkpoint() replays to the new one; dws refuses
// to open a checkpoint with a pending journal. When the patch changes the layout (tensors added, removed
// or re-shaped, headers that no longer fit), the files are rewritten and swapped in atomically instead.
Result<ApplyStats> apply_patch_in_place(const std::string& checkpoint_path, const Patch& patch,
                                        const ApplyOptions& options);

// A tensor in the caller's host memory (a numpy array, a torch CPU tensor): C-contiguous, little-endian.
struct TensorView {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<uint64_t> shape;
  std::span<std::byte> data;
};

// Applies `patch` into tensors held in memory, in place, in O(changes). `digests` must hold the tensor
// digest of every view the patch touches: the caller vouches for them (as for ApplyOptions::base_digests:
// recorded when the views were filled from a verified checkpoint and kept since); each must equal the
// patch's base digest (E_BASE_MISMATCH). Every result is checked against its target digest before
// anything is written, so a refused patch leaves every view untouched; the decoded changes are held
// meanwhile (memory O(changes)). On success `digests` holds the new digests; returns the elements written.
// A patch that adds, removes or re-shapes tensors, or changes a dtype, is E_UNSUPPORTED (the views
// cannot grow); a view missing for a patched tensor, or whose dtype, shape or size differs, is
// E_INVALID_ARGUMENT. Views the patch does not name are not read.
Result<uint64_t> apply_patch_to_tensors(const Patch& patch, std::span<const TensorView> views, TensorDigests& digests);

struct RecoverStats {
  bool had_journal = false;
  uint64_t records = 0;
  uint64_t changes = 0;
};
// Replays a committed journal left by an interrupted in-place apply, then removes it. Idempotent; a
// checkpoint without a journal is left untouched.
Result<RecoverStats> recover_checkpoint(const std::string& checkpoint_path);

}  // namespace dws
