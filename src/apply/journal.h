// journal.h — redo journal for crash-safe in-place apply (internal).
//
// Protocol (the invariant: after a crash the checkpoint is the old one, or a committed journal exists
// whose replay makes it the new one):
//   1. everything is validated before the journal is started;
//   2. the journal is written to a temp file: the file list, then records of absolute writes (byte
//      ranges, or scatters of elem_size-byte values at element positions), then a trailer with the
//      XXH3-64 of everything before it; fsync;
//   3. commit = rename to journal_path_for(checkpoint) + fsync of the directory;
//   4. replay: map each listed file read-write, perform every write, msync + fsync each file;
//   5. unlink the journal + fsync the directory.
// Replay only writes absolute bytes, so it is idempotent: a crash during 4 or 5 is repaired by
// replaying again (recover_checkpoint). A journal that fails its checksum or bounds is refused without
// touching the checkpoint.
//
// Layout (little-endian): "DWSJRNL1", u32 file_count, file_count × (u32 len, name bytes), then records:
//   u32 kind=1 range:   u32 file, u64 offset, u64 length, bytes[length]
//   u32 kind=2 scatter: u32 file, u64 data_offset, u32 elem_size, u64 count, u64 positions[count],
//                       bytes values[count*elem_size]
//   u32 kind=0 end
// then trailer: u64 xxh3_64(all bytes above), "DWSJEND1".
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "dws/status.h"

namespace dws::journal {

class Writer {
 public:
  // files: names relative to the checkpoint's directory (for a single-file checkpoint, its own name).
  static Result<Writer> create(const std::string& checkpoint_path, std::vector<std::string> files);
  Writer() = default;
  Writer(Writer&&) noexcept;
  Writer& operator=(Writer&&) noexcept;
  ~Writer();  // removes an uncommitted temp journal

  Status add_range(uint32_t file, uint64_t offset, std::span<const std::byte> bytes);
  Status add_scatter(uint32_t file, uint64_t data_offset, uint32_t elem_size, std::span<const uint64_t> positions,
                     std::span<const std::byte> values);
  // Steps 2 (trailer, fsync) and 3.
  Status commit();

 private:
  Status write(const void* data, size_t size);
  Status flush();
  int fd_ = -1;
  std::string temp_path_;
  std::string final_path_;
  std::vector<std::byte> buffer_;
  void* hash_state_ = nullptr;  // XXH3_state_t
};

struct ReplayStats {
  uint64_t records = 0;
  uint64_t changes = 0;
};

// Steps 4 and 5 for the committed journal of the checkpoint, if any (had_journal=false otherwise).
Result<ReplayStats> replay(const std::string& checkpoint_path, bool* had_journal);

}  // namespace dws::journal
