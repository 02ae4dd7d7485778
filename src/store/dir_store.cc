// The directory store driver: one file per object under a root directory (local disk, NFS, Lustre).
//
// Durability protocol (docs/store.md): every object is written to a temp file in its final directory,
// fsynced, then renamed over its key (put) or hard-linked to it (put_if_absent: link(2) fails with
// EEXIST instead of replacing), and the directory is fsynced. Readers never see a prefix of an object.
// Temp names start with '.', which keys cannot, so list() never shows them.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <fstream>

#include "core/file_io.h"
#include "dws/store.h"
#include "store/s3_store.h"

namespace dws {

namespace {

namespace fs = std::filesystem;

Status os_error(std::string_view what, const std::string& path, int err) {
  return make_error(err == ENOENT ? ErrorCode::kNotFound : ErrorCode::kIo,
                    std::string(what) + " " + path + ": " + io::errno_text(err));
}

// Writes `fill` into a fresh temp file next to `final_path` and fsyncs it; returns the temp path.
template <typename Fill>
Result<std::string> write_temp(const std::string& final_path, Fill&& fill) {
  std::error_code ec;
  fs::create_directories(io::parent_dir(final_path), ec);
  if (ec) return make_error(ErrorCode::kIo, "store: cannot create " + io::parent_dir(final_path) + ": " + ec.message());
  const std::string temp = io::temp_name_for(final_path);
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return os_error("store: create", temp, errno);
  Status st = fill(fd, temp);
  if (st.ok() && ::fsync(fd) != 0) st = os_error("store: fsync", temp, errno);
  if (::close(fd) != 0 && st.ok()) st = os_error("store: close", temp, errno);
  if (!st.ok()) {
    ::unlink(temp.c_str());
    return st;
  }
  return temp;
}

Status write_all(int fd, const std::byte* data, uint64_t size, const std::string& path) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, std::min<uint64_t>(size, 1u << 30));
    if (n < 0) {
      if (errno == EINTR) continue;
      return os_error("store: write", path, errno);
    }
    data += n;
    size -= static_cast<uint64_t>(n);
  }
  return Status::Ok();
}

// Copies the whole file at `from_path` into the open descriptor `fd` (named `to_path` in errors).
Status copy_file_into(const std::string& from_path, int fd, const std::string& to_path) {
  const int in = ::open(from_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) return os_error("store: open", from_path, errno);
  std::vector<std::byte> buf(1 << 20);
  Status st;
  for (;;) {
    const ssize_t n = ::read(in, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      st = os_error("store: read", from_path, errno);
      break;
    }
    if (n == 0) break;
    st = write_all(fd, buf.data(), static_cast<uint64_t>(n), to_path);
    if (!st.ok()) break;
  }
  ::close(in);
  return st;
}

class DirStore final : public Store {
 public:
  explicit DirStore(std::string root) : root_(std::move(root)) {}

  Status put(std::string_view key, std::span<const std::byte> data) override {
    DWS_RETURN_IF_ERROR(check_store_key(key));
    const std::string path = path_of(key);
    DWS_ASSIGN_OR_RETURN(std::string temp, write_temp(path, [&](int fd, const std::string& t) {
                           return write_all(fd, data.data(), data.size(), t);
                         }));
    return io::rename_durable(temp, path);
  }

  Status put_file(std::string_view key, const std::string& local_path) override {
    DWS_RETURN_IF_ERROR(check_store_key(key));
    const std::string path = path_of(key);
    DWS_ASSIGN_OR_RETURN(std::string temp, write_temp(path, [&](int fd, const std::string& t) {
                           return copy_file_into(local_path, fd, t);
                         }));
    return io::rename_durable(temp, path);
  }

  Status put_if_absent(std::string_view key, std::span<const std::byte> data) override {
    DWS_RETURN_IF_ERROR(check_store_key(key));
    const std::string path = path_of(key);
    DWS_ASSIGN_OR_RETURN(std::string temp, write_temp(path, [&](int fd, const std::string& t) {
                           return write_all(fd, data.data(), data.size(), t);
                         }));
    const int rc = ::link(temp.c_str(), path.c_str());
    const int err = errno;
    ::unlink(temp.c_str());
    if (rc != 0) {
      if (err == EEXIST) return make_error(ErrorCode::kExists, "store: " + std::string(key) + " already exists in " + describe());
      return os_error("store: link", path, err);
    }
    return io::fsync_directory(io::parent_dir(path));
  }

  Result<std::vector<std::byte>> get(std::string_view key, uint64_t max_size_bytes) override {
    DWS_RETURN_IF_ERROR(check_store_key(key));
    DWS_ASSIGN_OR_RETURN(std::string text, io::read_file(path_of(key), max_size_bytes));
    const auto* p = reinterpret_cast<const std::byte*>(text.data());
    return std::vector<std::byte>(p, p + text.size());
  }

  Result<std::vector<std::byte>> get_range(std::string_view key, uint64_t offset, uint64_t length) override {
    DWS_RETURN_IF_ERROR(check_store_key(key));
    const std::string path = path_of(key);
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return os_error("store: open", path, errno);
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const int err = errno;
      ::close(fd);
      return os_error("store: stat", path, err);
    }
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    if (offset > size || length > size - offset) {
      ::close(fd);
      return make_error(ErrorCode::kInvalidArgument, "store: range [" + std::to_string(offset) + ", +" + std::to_string(length) +
                                                         ") past the end of " + std::string(key) + " (" + std::to_string(size) + " bytes)");
    }
    std::vector<std::byte> out(length);
    uint64_t done = 0;
    while (done < length) {
      const ssize_t n = ::pread(fd, out.data() + done, length - done, static_cast<off_t>(offset + done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        const int err = n < 0 ? errno : EIO;
        ::close(fd);
        return os_error("store: read", path, err);
      }
      done += static_cast<uint64_t>(n);
    }
    ::close(fd);
    return out;
  }

  Status get_file(std::string_view key, const std::string& local_path) override {
    DWS_RETURN_IF_ERROR(check_store_key(key));
    const std::string path = path_of(key);
    if (!io::path_exists(path)) return make_error(ErrorCode::kNotFound, "store: no object " + std::string(key) + " in " + describe());
    DWS_ASSIGN_OR_RETURN(std::string temp, write_temp(local_path, [&](int fd, const std::string& t) {
                           return copy_file_into(path, fd, t);
                         }));
    return io::rename_durable(temp, local_path);
  }

  Result<std::optional<ObjectInfo>> stat(std::string_view key) override {
    DWS_RETURN_IF_ERROR(check_store_key(key));
    struct stat st {};
    const std::string path = path_of(key);
    if (::stat(path.c_str(), &st) != 0) {
      if (errno == ENOENT || errno == ENOTDIR) return std::optional<ObjectInfo>();
      return os_error("store: stat", path, errno);
    }
    if (!S_ISREG(st.st_mode)) return std::optional<ObjectInfo>();
    return std::optional<ObjectInfo>(ObjectInfo{std::string(key), static_cast<uint64_t>(st.st_size)});
  }

  Result<std::vector<ObjectInfo>> list(std::string_view prefix) override {
    std::vector<ObjectInfo> out;
    // Walk only the directory the prefix's complete segments name.
    const size_t slash = prefix.rfind('/');
    const std::string dir_key = slash == std::string_view::npos ? "" : std::string(prefix.substr(0, slash));
    if (!dir_key.empty()) DWS_RETURN_IF_ERROR(check_store_key(dir_key));
    const fs::path start = dir_key.empty() ? fs::path(root_) : fs::path(root_) / dir_key;
    DWS_RETURN_IF_ERROR(walk(start, prefix, out));
    std::sort(out.begin(), out.end(), [](const ObjectInfo& a, const ObjectInfo& b) { return a.key < b.key; });
    return out;
  }

  Status remove(std::string_view key) override {
    DWS_RETURN_IF_ERROR(check_store_key(key));
    const std::string path = path_of(key);
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) return os_error("store: remove", path, errno);
    // Empty directories left behind are harmless; prune the object's own directory when it is empty.
    ::rmdir(io::parent_dir(path).c_str());
    return Status::Ok();
  }

  std::string describe() const override { return "dir:" + root_; }

 private:
  // Adds the objects below `dir` whose keys start with `prefix`. Entries that vanish while we look
  // (another process removing a version or a temp file) are skipped, not errors.
  Status walk(const fs::path& dir, std::string_view prefix, std::vector<ObjectInfo>& out) const {
    std::error_code ec;
    fs::directory_iterator it(dir, ec);
    if (ec) {
      if (ec == std::errc::no_such_file_or_directory || ec == std::errc::not_a_directory) return Status::Ok();
      return make_error(ErrorCode::kIo, "store: list " + dir.string() + ": " + ec.message());
    }
    for (; it != fs::directory_iterator(); it.increment(ec)) {
      if (ec) break;
      const std::string name = it->path().filename().string();
      if (name.empty() || name[0] == '.') continue;  // temp files and anything hidden are not objects
      std::error_code st_ec;
      const fs::file_status st = it->symlink_status(st_ec);
      if (st_ec) continue;
      if (fs::is_directory(st)) {
        DWS_RETURN_IF_ERROR(walk(it->path(), prefix, out));
        continue;
      }
      if (!fs::is_regular_file(st)) continue;
      const std::string key = it->path().lexically_relative(root_).generic_string();
      if (key.compare(0, prefix.size(), prefix) != 0 || !check_store_key(key).ok()) continue;
      const uintmax_t size = it->file_size(st_ec);
      if (st_ec) continue;  // removed since we saw it
      out.push_back({key, static_cast<uint64_t>(size)});
    }
    if (ec && ec != std::errc::no_such_file_or_directory) {
      return make_error(ErrorCode::kIo, "store: list " + dir.string() + ": " + ec.message());
    }
    return Status::Ok();
  }

  std::string path_of(std::string_view key) const { return root_ + "/" + std::string(key); }
  std::string root_;
};

bool key_char_ok(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

}  // namespace

Status check_store_key(std::string_view key) {
  auto bad = [&](const std::string& why) {
    std::string shown(key.substr(0, 80));
    for (char& c : shown) {
      if (static_cast<unsigned char>(c) < 0x20) c = '?';
    }
    return make_error(ErrorCode::kInvalidArgument, "store key '" + shown + "' " + why);
  };
  if (key.empty()) return bad("is empty");
  if (key.size() > 512) return bad("is longer than 512 bytes");
  size_t start = 0;
  while (start <= key.size()) {
    size_t end = key.find('/', start);
    if (end == std::string_view::npos) end = key.size();
    const std::string_view seg = key.substr(start, end - start);
    if (seg.empty()) return bad("has an empty segment (leading, trailing or doubled '/')");
    if (seg[0] == '.') return bad("has a segment starting with '.'");
    for (char c : seg) {
      if (!key_char_ok(c)) return bad("has a character outside [A-Za-z0-9._-/]");
    }
    start = end + 1;
  }
  return Status::Ok();
}

Result<std::unique_ptr<Store>> open_store(const std::string& uri, const StoreOptions& options) {
  std::string path = uri;
  if (uri.rfind("s3://", 0) == 0) {
    DWS_ASSIGN_OR_RETURN(S3Config config, S3Config::from_uri(uri, options.endpoint));
    return open_s3_store(config, options);
  }
  if (!options.endpoint.empty()) {
    return make_error(ErrorCode::kInvalidArgument, "store '" + uri + "': an endpoint (" + options.endpoint + ") applies only to s3:// stores");
  }
  if (uri.rfind("file://", 0) == 0) {
    path = uri.substr(7);
  } else if (const size_t scheme = uri.find("://"); scheme != std::string::npos) {
    return make_error(ErrorCode::kUnsupported, "store '" + uri + "': scheme '" + uri.substr(0, scheme) +
                                                   "' is not built in (this build has: a directory path, file://, s3://)");
  }
  if (path.empty()) return make_error(ErrorCode::kInvalidArgument, "store: empty path");
  std::error_code ec;
  if (fs::exists(path, ec) && !fs::is_directory(path, ec)) {
    return make_error(ErrorCode::kInvalidArgument, "store: " + path + " exists and is not a directory");
  }
  fs::create_directories(path, ec);
  if (ec) return make_error(ErrorCode::kIo, "store: cannot create " + path + ": " + ec.message());
  path = fs::absolute(path).lexically_normal().string();
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  return std::unique_ptr<Store>(std::make_unique<DirStore>(path));
}

}  // namespace dws
