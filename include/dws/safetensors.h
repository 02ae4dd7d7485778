// dws/safetensors.h — reader and writer for the safetensors format
// (https://github.com/huggingface/safetensors, "Format" section).
//
// Layout: 8-byte little-endian header length N, N bytes of JSON header (starts with '{', may be padded
// with trailing spaces), then the data section. Every byte of input is treated as hostile: the parser
// checks every length and offset with overflow-checked arithmetic and rejects (never crashes on) bad
// header lengths, bad JSON, unknown fields, unknown dtypes, dtype/shape/size mismatches, offsets out of
// bounds, overlaps, holes and duplicate names. Error codes: see dws/status.h.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dws/dtype.h"
#include "dws/status.h"

namespace dws {

struct TensorInfo {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<uint64_t> shape;
  uint64_t data_begin = 0;  // half-open byte range within the data section
  uint64_t data_end = 0;
  uint64_t size_bytes() const { return data_end - data_begin; }
  uint64_t numel() const { return size_bytes() / dtype_size_bytes(dtype); }
};

using FileMetadata = std::map<std::string, std::string>;

struct ParseLimits {
  uint64_t max_header_bytes = 100ull << 20;  // the reference implementation's limit
  uint64_t max_name_bytes = 4096;
  uint64_t max_rank = 64;
};

struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;  // sorted by data_begin (file order)
  FileMetadata metadata;            // "__metadata__", empty when absent
  uint64_t header_size_bytes = 0;   // N
  uint64_t data_offset() const { return 8 + header_size_bytes; }
  // nullptr when absent. O(log n).
  const TensorInfo* find(std::string_view name) const;
  std::vector<uint32_t> by_name;  // indices into tensors, sorted by name
};

// Parses and validates a whole file image (header and the size of the data section).
Result<SafetensorsHeader> parse_safetensors(std::span<const std::byte> file_bytes, const ParseLimits& limits = {});

// A memory-mapped, validated safetensors file.
class SafetensorsFile {
 public:
  enum class Mode { kReadOnly, kReadWrite };
  static Result<SafetensorsFile> open(const std::string& path, Mode mode = Mode::kReadOnly,
                                      const ParseLimits& limits = {});
  SafetensorsFile();
  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
  ~SafetensorsFile();

  const std::string& path() const;
  const SafetensorsHeader& header() const { return header_; }
  std::span<const std::byte> file_bytes() const;
  std::span<const std::byte> tensor_bytes(const TensorInfo& info) const;
  // kReadWrite only: writes reach the file (not yet durable; call sync()).
  std::span<std::byte> mutable_file_bytes();
  std::span<std::byte> mutable_tensor_bytes(const TensorInfo& info);
  Status sync();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  SafetensorsHeader header_;
};

// What a writer lays out: tensors in this order, contiguous, no padding between them.
struct TensorSpec {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<uint64_t> shape;
};

// The header bytes (JSON padded with spaces to a multiple of 8) for tensors laid out in order.
Result<std::string> build_safetensors_header(std::span<const TensorSpec> tensors, const FileMetadata& metadata);

// Writes a new safetensors file through the durability protocol of core/file_io.h: the caller fills the
// tensors' bytes through tensor_data(i), then commit() publishes the file atomically. Destroying an
// uncommitted writer removes its temp file; the final path is never partially written.
class SafetensorsWriter {
 public:
  static Result<SafetensorsWriter> create(const std::string& final_path, std::vector<TensorSpec> tensors,
                                          const FileMetadata& metadata);
  SafetensorsWriter();
  SafetensorsWriter(SafetensorsWriter&&) noexcept;
  SafetensorsWriter& operator=(SafetensorsWriter&&) noexcept;
  ~SafetensorsWriter();

  size_t tensor_count() const { return tensors_.size(); }
  const TensorSpec& spec(size_t i) const { return tensors_[i]; }
  std::span<std::byte> tensor_data(size_t i);
  Status commit();
  // Syncs and hands the temp file to the caller (who renames it later); returns its path.
  Result<std::string> sync_and_release();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::vector<TensorSpec> tensors_;
  std::vector<uint64_t> offsets_;  // absolute file offset of each tensor's data
};

// One-shot writer for tensors already in memory.
struct TensorWrite {
  TensorSpec spec;
  std::span<const std::byte> bytes;
};
Status write_safetensors(const std::string& path, std::span<const TensorWrite> tensors, const FileMetadata& metadata);

}  // namespace dws
