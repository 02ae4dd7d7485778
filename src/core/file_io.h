// file_io.h — memory-mapped reads and crash-safe writes (internal).
//
// Durability protocol for every file dws creates or replaces (the safetensors lesson: never write over
// a file someone may have mapped, never leave a half-written file under the final name):
//   1. create a temp file "<dir>/.<name>.dws-tmp-<pid>-<n>" in the destination directory (same filesystem);
//   2. write it completely (through a shared mapping or write(2));
//   3. msync + fsync the temp file;
//   4. rename(2) it over the final name (atomic on POSIX filesystems);
//   5. fsync the directory so the rename itself is durable.
// A crash before 4 leaves the old file (and a stray temp that the next writer may remove); after 4 the
// new file. Temp files of an uncommitted writer are removed by its destructor.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "dws/status.h"

namespace dws::io {

class MappedFile {
 public:
  enum class Mode { kReadOnly, kReadWrite };
  static Result<MappedFile> open(const std::string& path, Mode mode);

  MappedFile() = default;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  std::span<const std::byte> bytes() const { return {data_, size_bytes_}; }
  // Only for kReadWrite; writes go straight to the file's page cache (MAP_SHARED).
  std::span<std::byte> mutable_bytes() { return {data_, size_bytes_}; }
  uint64_t size_bytes() const { return size_bytes_; }
  const std::string& path() const { return path_; }
  // msync + fsync; for kReadWrite mappings.
  Status sync();

 private:
  void reset();
  std::string path_;
  int fd_ = -1;
  std::byte* data_ = nullptr;
  uint64_t size_bytes_ = 0;
  Mode mode_ = Mode::kReadOnly;
};

// A new file of a known size, written through a mapping, published atomically by commit().
class AtomicOutputFile {
 public:
  static Result<AtomicOutputFile> create(const std::string& final_path, uint64_t size_bytes);

  AtomicOutputFile() = default;
  AtomicOutputFile(AtomicOutputFile&& other) noexcept;
  AtomicOutputFile& operator=(AtomicOutputFile&& other) noexcept;
  AtomicOutputFile(const AtomicOutputFile&) = delete;
  AtomicOutputFile& operator=(const AtomicOutputFile&) = delete;
  ~AtomicOutputFile();  // removes the temp file unless committed or released

  std::span<std::byte> bytes() { return map_.mutable_bytes(); }
  const std::string& temp_path() const { return temp_path_; }
  const std::string& final_path() const { return final_path_; }

  // Steps 3-5 of the protocol.
  Status commit();
  // Step 3 only; the caller takes over the temp file (renames it later, e.g. from a journal).
  Result<std::string> sync_and_release();

 private:
  void discard();
  MappedFile map_;
  std::string temp_path_;
  std::string final_path_;
};

// Whole small file (index JSON, journal) through the same protocol.
Status write_file_atomic(const std::string& path, std::span<const std::byte> bytes);
Status write_file_atomic(const std::string& path, std::string_view text);
Result<std::string> read_file(const std::string& path, uint64_t max_size_bytes);

Status fsync_directory(const std::string& dir);
Status fsync_file(const std::string& path);
Status rename_durable(const std::string& from, const std::string& to);  // rename + fsync of both dirs
std::string temp_name_for(const std::string& final_path);
std::string parent_dir(const std::string& path);
std::string base_name(const std::string& path);
bool path_exists(const std::string& path);
bool is_directory(const std::string& path);
std::string errno_text(int err);

}  // namespace dws::io
