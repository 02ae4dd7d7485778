// dws/checkpoint.h — a model checkpoint on disk: one safetensors file, or a directory of shards with
// "model.safetensors.index.json" as Hugging Face writes them (a directory holding exactly one
// *.safetensors file and no index is accepted too).
#pragma once

#include <functional>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dws/digest.h"
#include "dws/safetensors.h"
#include "dws/status.h"

namespace dws {

inline constexpr std::string_view kIndexFileName = "model.safetensors.index.json";
inline constexpr uint64_t kMaxIndexFileBytes = 64ull << 20;

struct CheckpointTensor {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<uint64_t> shape;
  uint32_t shard = 0;             // index into the checkpoint's shards
  const TensorInfo* info = nullptr;  // owned by the shard's header
  uint64_t numel() const { return info->numel(); }
  uint64_t size_bytes() const { return info->size_bytes(); }
};

// Where every tensor lives and in what order: enough to write a checkpoint of the same shape.
struct CheckpointLayout {
  bool is_directory = false;
  bool has_index = false;                 // directory with model.safetensors.index.json
  std::string index_metadata_json = "{}";  // the index's "metadata" object (total_size is recomputed)
  struct Shard {
    std::string file;  // file name inside the directory; the file's own name for a single file
    FileMetadata metadata;
    std::vector<TensorSpec> tensors;  // in data order
  };
  std::vector<Shard> shards;
};

class Checkpoint {
 public:
  struct OpenOptions {
    SafetensorsFile::Mode mode = SafetensorsFile::Mode::kReadOnly;
    // A checkpoint with a pending in-place journal is refused (E_PENDING_JOURNAL) unless this is set;
    // only recovery sets it.
    bool ignore_pending_journal = false;
  };
  static Result<Checkpoint> open(const std::string& path, const OpenOptions& options);
  static Result<Checkpoint> open(const std::string& path) { return open(path, OpenOptions{}); }

  const std::string& path() const { return path_; }
  bool is_directory() const { return layout_.is_directory; }
  const std::vector<CheckpointTensor>& tensors() const { return tensors_; }  // sorted by name
  const CheckpointTensor* find(std::string_view name) const;
  std::span<const std::byte> bytes(const CheckpointTensor& t) const { return shards_[t.shard].tensor_bytes(*t.info); }
  std::span<std::byte> mutable_bytes(const CheckpointTensor& t) { return shards_[t.shard].mutable_tensor_bytes(*t.info); }
  size_t shard_count() const { return shards_.size(); }
  SafetensorsFile& shard(size_t i) { return shards_[i]; }
  const SafetensorsFile& shard(size_t i) const { return shards_[i]; }
  const CheckpointLayout& layout() const { return layout_; }
  uint64_t total_tensor_bytes() const;
  // msync + fsync of every shard (read-write checkpoints).
  Status sync();

 private:
  std::string path_;
  std::vector<SafetensorsFile> shards_;
  std::vector<CheckpointTensor> tensors_;
  CheckpointLayout layout_;
};

// A shard file name that stays inside its directory: non-empty, at most 255 bytes, no '/', no NUL, not
// "." or "..". Names from indexes, patches and journals are checked with it before any path is built.
bool is_plain_file_name(std::string_view name);

// Where an in-place apply keeps its journal: "<file>.dws-journal" or "<dir>/.dws-journal".
std::string journal_path_for(const std::string& checkpoint_path);

// Writes a new checkpoint shaped like `layout` at `path` (a file, or a directory when layout.is_directory),
// calling fill(spec, out) once per tensor to produce its bytes. All-or-nothing: files go to temp names
// (a temp directory for a directory) and appear under `path` only after every byte is durable. An
// existing `path` is an error (E_EXISTS) unless overwrite is set; then it is replaced.
using FillTensorFn = std::function<Status(const TensorSpec& spec, std::span<std::byte> out)>;
Status write_checkpoint(const std::string& path, const CheckpointLayout& layout, const FillTensorFn& fill,
                        bool overwrite);

// Tensor digests by name.
using TensorDigests = std::map<std::string, Digest128, std::less<>>;

// The tensor digest (dws/digest.h) of every tensor, aligned with checkpoint.tensors(); big tensors are
// hashed in parallel chunks. threads == 0 means all cores.
std::vector<Digest128> tensor_digests(const Checkpoint& checkpoint, size_t threads);
// The same, taken from `known` when it names every tensor (digests the caller vouches for); otherwise
// computed, reading the whole checkpoint. `known` may be null.
std::vector<Digest128> tensor_digests(const Checkpoint& checkpoint, const TensorDigests* known, size_t threads);
// Digests aligned with checkpoint.tensors(), keyed by tensor name.
TensorDigests tensor_digests_by_name(const Checkpoint& checkpoint, std::span<const Digest128> digests);

// The state digest (format v2): the sum of the tensor digests, which already bind each tensor's name,
// dtype and shape. Independent of order, sharding and file metadata; updated in O(1) per changed tensor
// by subtracting its old digest and adding its new one.
Digest128 state_digest(std::span<const Digest128> tensor_digests);

}  // namespace dws
