#include "apply/journal.h"

#include <fcntl.h>
#include <unistd.h>
#include <xxhash.h>

#include <cstring>

#include "core/file_io.h"
#include "dws/checkpoint.h"

namespace dws::journal {

namespace {
constexpr char kMagic[8] = {'D', 'W', 'S', 'J', 'R', 'N', 'L', '1'};
constexpr char kEndMagic[8] = {'D', 'W', 'S', 'J', 'E', 'N', 'D', '1'};
constexpr uint32_t kEnd = 0, kRange = 1, kScatter = 2;
constexpr size_t kBufferBytes = 4u << 20;

std::string checkpoint_dir(const std::string& checkpoint_path) {
  return io::is_directory(checkpoint_path) ? checkpoint_path : io::parent_dir(checkpoint_path);
}
}  // namespace

Result<Writer> Writer::create(const std::string& checkpoint_path, std::vector<std::string> files) {
  Writer w;
  w.final_path_ = journal_path_for(checkpoint_path);
  w.temp_path_ = io::temp_name_for(w.final_path_);
  w.fd_ = ::open(w.temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (w.fd_ < 0) return make_error(ErrorCode::kIo, "create journal '" + w.temp_path_ + "': " + io::errno_text(errno));
  w.hash_state_ = XXH3_createState();
  XXH3_64bits_reset(static_cast<XXH3_state_t*>(w.hash_state_));
  DWS_RETURN_IF_ERROR(w.write(kMagic, 8));
  uint32_t n = static_cast<uint32_t>(files.size());
  DWS_RETURN_IF_ERROR(w.write(&n, 4));
  for (const auto& f : files) {
    uint32_t len = static_cast<uint32_t>(f.size());
    DWS_RETURN_IF_ERROR(w.write(&len, 4));
    DWS_RETURN_IF_ERROR(w.write(f.data(), f.size()));
  }
  return w;
}

Writer::Writer(Writer&& o) noexcept { *this = std::move(o); }

Writer& Writer::operator=(Writer&& o) noexcept {
  if (this != &o) {
    this->~Writer();
    fd_ = std::exchange(o.fd_, -1);
    temp_path_ = std::move(o.temp_path_);
    o.temp_path_.clear();
    final_path_ = std::move(o.final_path_);
    buffer_ = std::move(o.buffer_);
    hash_state_ = std::exchange(o.hash_state_, nullptr);
  }
  return *this;
}

Writer::~Writer() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  if (!temp_path_.empty()) ::unlink(temp_path_.c_str());
  temp_path_.clear();
  if (hash_state_) XXH3_freeState(static_cast<XXH3_state_t*>(hash_state_));
  hash_state_ = nullptr;
}

Status Writer::write(const void* data, size_t size) {
  XXH3_64bits_update(static_cast<XXH3_state_t*>(hash_state_), data, size);
  const auto* p = static_cast<const std::byte*>(data);
  buffer_.insert(buffer_.end(), p, p + size);
  return buffer_.size() >= kBufferBytes ? flush() : Status::Ok();
}

Status Writer::flush() {
  size_t done = 0;
  while (done < buffer_.size()) {
    ssize_t n = ::write(fd_, buffer_.data() + done, buffer_.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return make_error(ErrorCode::kIo, "write journal '" + temp_path_ + "': " + io::errno_text(errno));
    }
    done += static_cast<size_t>(n);
  }
  buffer_.clear();
  return Status::Ok();
}

Status Writer::add_range(uint32_t file, uint64_t offset, std::span<const std::byte> bytes) {
  uint64_t len = bytes.size();
  DWS_RETURN_IF_ERROR(write(&kRange, 4));
  DWS_RETURN_IF_ERROR(write(&file, 4));
  DWS_RETURN_IF_ERROR(write(&offset, 8));
  DWS_RETURN_IF_ERROR(write(&len, 8));
  return write(bytes.data(), bytes.size());
}

Status Writer::add_scatter(uint32_t file, uint64_t data_offset, uint32_t elem_size, std::span<const uint64_t> positions,
                           std::span<const std::byte> values) {
  uint64_t count = positions.size();
  DWS_RETURN_IF_ERROR(write(&kScatter, 4));
  DWS_RETURN_IF_ERROR(write(&file, 4));
  DWS_RETURN_IF_ERROR(write(&data_offset, 8));
  DWS_RETURN_IF_ERROR(write(&elem_size, 4));
  DWS_RETURN_IF_ERROR(write(&count, 8));
  DWS_RETURN_IF_ERROR(write(positions.data(), positions.size_bytes()));
  return write(values.data(), values.size());
}

Status Writer::commit() {
  DWS_RETURN_IF_ERROR(write(&kEnd, 4));
  uint64_t checksum = XXH3_64bits_digest(static_cast<XXH3_state_t*>(hash_state_));
  buffer_.insert(buffer_.end(), reinterpret_cast<const std::byte*>(&checksum), reinterpret_cast<const std::byte*>(&checksum) + 8);
  buffer_.insert(buffer_.end(), reinterpret_cast<const std::byte*>(kEndMagic), reinterpret_cast<const std::byte*>(kEndMagic) + 8);
  DWS_RETURN_IF_ERROR(flush());
  if (::fsync(fd_) != 0) return make_error(ErrorCode::kIo, "fsync journal '" + temp_path_ + "': " + io::errno_text(errno));
  ::close(fd_);
  fd_ = -1;
  DWS_RETURN_IF_ERROR(io::rename_durable(temp_path_, final_path_));
  temp_path_.clear();
  return Status::Ok();
}

// ---- replay ----

namespace {

struct Cursor {
  std::span<const std::byte> bytes;
  size_t at = 0;
  template <typename T>
  bool read(T* out) {
    if (bytes.size() - at < sizeof(T)) return false;
    std::memcpy(out, bytes.data() + at, sizeof(T));
    at += sizeof(T);
    return true;
  }
  bool take(uint64_t n, std::span<const std::byte>* out) {
    if (bytes.size() - at < n) return false;
    *out = bytes.subspan(at, n);
    at += n;
    return true;
  }
};

Status corrupt(const std::string& path, const std::string& why) {
  return make_error(ErrorCode::kDecode, "journal '" + path + "' is corrupt (" + why + "); the checkpoint was not touched");
}

// Parses the journal and checks every record against the files' sizes; performs the writes only when
// `write` is set (replay walks twice, so a bad record is found before the first byte is written).
Status walk(const std::string& path, std::span<const std::byte> body, std::vector<io::MappedFile>& files, bool write,
            ReplayStats* stats) {
  const size_t file_count = files.size();
  Cursor c{body, 8};
  uint32_t n = 0;
  c.read(&n);
  for (uint32_t i = 0; i < n; ++i) {
    uint32_t len;
    std::span<const std::byte> name;
    if (!c.read(&len) || !c.take(len, &name)) return corrupt(path, "file list");
  }
  for (;;) {
    uint32_t kind, file;
    if (!c.read(&kind)) return corrupt(path, "record kind");
    if (kind == kEnd) break;
    if (!c.read(&file) || file >= file_count) return corrupt(path, "file index");
    const uint64_t file_size = files[file].size_bytes();
    if (kind == kRange) {
      uint64_t offset, len;
      std::span<const std::byte> data;
      uint64_t end;
      if (!c.read(&offset) || !c.read(&len) || !c.take(len, &data)) return corrupt(path, "range record");
      if (__builtin_add_overflow(offset, len, &end) || end > file_size) return corrupt(path, "range beyond the file");
      if (write) std::memcpy(files[file].mutable_bytes().data() + offset, data.data(), len);
    } else if (kind == kScatter) {
      uint64_t data_offset, count;
      uint32_t w;
      std::span<const std::byte> pos_bytes, values;
      if (!c.read(&data_offset) || !c.read(&w) || !c.read(&count)) return corrupt(path, "scatter record");
      uint64_t pos_len, val_len;
      if ((w != 1 && w != 2 && w != 4 && w != 8) || __builtin_mul_overflow(count, 8ull, &pos_len) ||
          __builtin_mul_overflow(count, static_cast<uint64_t>(w), &val_len) || !c.take(pos_len, &pos_bytes) ||
          !c.take(val_len, &values)) {
        return corrupt(path, "scatter record");
      }
      for (uint64_t i = 0; i < count; ++i) {
        uint64_t p, at, end;
        std::memcpy(&p, pos_bytes.data() + 8 * i, 8);
        if (__builtin_mul_overflow(p, static_cast<uint64_t>(w), &at) || __builtin_add_overflow(at, data_offset, &at) ||
            __builtin_add_overflow(at, static_cast<uint64_t>(w), &end) || end > file_size) {
          return corrupt(path, "scatter position beyond the file");
        }
        if (write) std::memcpy(files[file].mutable_bytes().data() + at, values.data() + i * w, w);
      }
      if (stats) stats->changes += count;
    } else {
      return corrupt(path, "unknown record kind " + std::to_string(kind));
    }
    if (stats) ++stats->records;
  }
  if (c.at != body.size()) return corrupt(path, "bytes after the end record");
  return Status::Ok();
}

}  // namespace

Result<ReplayStats> replay(const std::string& checkpoint_path, bool* had_journal) {
  const std::string path = journal_path_for(checkpoint_path);
  *had_journal = io::path_exists(path);
  if (!*had_journal) return ReplayStats{};
  DWS_ASSIGN_OR_RETURN(io::MappedFile j, io::MappedFile::open(path, io::MappedFile::Mode::kReadOnly));
  auto all = j.bytes();
  if (all.size() < 8 + 4 + 4 + 16 || std::memcmp(all.data(), kMagic, 8) != 0 ||
      std::memcmp(all.data() + all.size() - 8, kEndMagic, 8) != 0) {
    return corrupt(path, "bad magic or truncated");
  }
  auto body = all.first(all.size() - 16);
  uint64_t checksum;
  std::memcpy(&checksum, all.data() + all.size() - 16, 8);
  if (XXH3_64bits(body.data(), body.size()) != checksum) return corrupt(path, "checksum mismatch");

  // File list.
  Cursor c{body, 8};
  uint32_t n = 0;
  c.read(&n);
  const std::string dir = checkpoint_dir(checkpoint_path);
  std::vector<io::MappedFile> files;
  for (uint32_t i = 0; i < n; ++i) {
    uint32_t len;
    std::span<const std::byte> name;
    if (!c.read(&len) || !c.take(len, &name)) return corrupt(path, "file list");
    std::string file(reinterpret_cast<const char*>(name.data()), name.size());
    if (!is_plain_file_name(file)) return corrupt(path, "file name '" + file + "' leaves the directory");
    DWS_ASSIGN_OR_RETURN(io::MappedFile f, io::MappedFile::open(dir + "/" + file, io::MappedFile::Mode::kReadWrite));
    files.push_back(std::move(f));
  }
  DWS_RETURN_IF_ERROR(walk(path, body, files, /*write=*/false, nullptr));
  ReplayStats stats;
  DWS_RETURN_IF_ERROR(walk(path, body, files, /*write=*/true, &stats));
  for (auto& f : files) DWS_RETURN_IF_ERROR(f.sync());
  if (::unlink(path.c_str()) != 0) return make_error(ErrorCode::kIo, "remove journal '" + path + "': " + io::errno_text(errno));
  DWS_RETURN_IF_ERROR(io::fsync_directory(io::parent_dir(path)));
  return stats;
}

}  // namespace dws::journal
