#include "core/file_io.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

namespace dws::io {

std::string errno_text(int err) { return std::string(std::strerror(err)) + " (errno " + std::to_string(err) + ")"; }

namespace {
Status os_error(std::string_view what, const std::string& path, int err) {
  return make_error(ErrorCode::kIo, std::string(what) + " '" + path + "': " + errno_text(err));
}
}  // namespace

std::string parent_dir(const std::string& path) {
  auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string base_name(const std::string& path) {
  auto slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

bool path_exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

bool is_directory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string temp_name_for(const std::string& final_path) {
  static std::atomic<uint64_t> counter{0};
  return parent_dir(final_path) + "/." + base_name(final_path) + ".dws-tmp-" + std::to_string(::getpid()) + "-" +
         std::to_string(counter.fetch_add(1));
}

namespace {

// Opens `path` with `flags` and fsyncs it; errors name `what` ("directory " or "") and the path.
Status open_and_fsync(const std::string& path, int flags, const std::string& what) {
  int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0) return os_error("open " + what, path, errno);
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) return os_error("fsync " + what, path, err);
  return Status::Ok();
}

}  // namespace

Status fsync_directory(const std::string& dir) { return open_and_fsync(dir, O_RDONLY | O_DIRECTORY, "directory"); }

Status fsync_file(const std::string& path) { return open_and_fsync(path, O_RDONLY, "file"); }

Status rename_durable(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) return os_error("rename to '" + to + "' from", from, errno);
  DWS_RETURN_IF_ERROR(fsync_directory(parent_dir(to)));
  if (parent_dir(from) != parent_dir(to)) DWS_RETURN_IF_ERROR(fsync_directory(parent_dir(from)));
  return Status::Ok();
}

// ---- MappedFile ----

Result<MappedFile> MappedFile::open(const std::string& path, Mode mode) {
  MappedFile f;
  f.path_ = path;
  f.mode_ = mode;
  f.fd_ = ::open(path.c_str(), (mode == Mode::kReadOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC);
  if (f.fd_ < 0) {
    int err = errno;
    return make_error(err == ENOENT ? ErrorCode::kNotFound : ErrorCode::kIo,
                      "open '" + path + "': " + errno_text(err));
  }
  struct stat st;
  if (::fstat(f.fd_, &st) != 0) return os_error("stat", path, errno);
  if (!S_ISREG(st.st_mode)) return make_error(ErrorCode::kInvalidArgument, "'" + path + "' is not a regular file");
  f.size_bytes_ = static_cast<uint64_t>(st.st_size);
  if (f.size_bytes_ > 0) {
    int prot = mode == Mode::kReadOnly ? PROT_READ : PROT_READ | PROT_WRITE;
    void* p = ::mmap(nullptr, f.size_bytes_, prot, MAP_SHARED, f.fd_, 0);
    if (p == MAP_FAILED) return os_error("mmap", path, errno);
    f.data_ = static_cast<std::byte*>(p);
  }
  return f;
}

MappedFile::MappedFile(MappedFile&& other) noexcept { *this = std::move(other); }

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    reset();
    path_ = std::move(other.path_);
    fd_ = std::exchange(other.fd_, -1);
    data_ = std::exchange(other.data_, nullptr);
    size_bytes_ = std::exchange(other.size_bytes_, 0);
    mode_ = other.mode_;
  }
  return *this;
}

MappedFile::~MappedFile() { reset(); }

void MappedFile::reset() {
  if (data_) ::munmap(data_, size_bytes_);
  if (fd_ >= 0) ::close(fd_);
  data_ = nullptr;
  fd_ = -1;
  size_bytes_ = 0;
}

Status MappedFile::sync() {
  if (mode_ != Mode::kReadWrite) return Status::Ok();
  if (data_ && ::msync(data_, size_bytes_, MS_SYNC) != 0) return os_error("msync", path_, errno);
  if (::fsync(fd_) != 0) return os_error("fsync", path_, errno);
  return Status::Ok();
}

// ---- AtomicOutputFile ----

Result<AtomicOutputFile> AtomicOutputFile::create(const std::string& final_path, uint64_t size_bytes) {
  AtomicOutputFile out;
  out.final_path_ = final_path;
  out.temp_path_ = temp_name_for(final_path);
  int fd = ::open(out.temp_path_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return os_error("create", out.temp_path_, errno);
  int rc = size_bytes > 0 ? ::posix_fallocate(fd, 0, static_cast<off_t>(size_bytes)) : 0;
  if (rc == EOPNOTSUPP || rc == EINVAL) rc = ::ftruncate(fd, static_cast<off_t>(size_bytes)) == 0 ? 0 : errno;
  ::close(fd);
  if (rc != 0) {
    ::unlink(out.temp_path_.c_str());
    return os_error("allocate " + std::to_string(size_bytes) + " bytes for", out.temp_path_, rc);
  }
  auto map = MappedFile::open(out.temp_path_, MappedFile::Mode::kReadWrite);
  if (!map.ok()) {
    ::unlink(out.temp_path_.c_str());
    return map.status();
  }
  out.map_ = std::move(map).value();
  return out;
}

AtomicOutputFile::AtomicOutputFile(AtomicOutputFile&& other) noexcept { *this = std::move(other); }

AtomicOutputFile& AtomicOutputFile::operator=(AtomicOutputFile&& other) noexcept {
  if (this != &other) {
    discard();
    map_ = std::move(other.map_);
    temp_path_ = std::move(other.temp_path_);
    final_path_ = std::move(other.final_path_);
    other.temp_path_.clear();
  }
  return *this;
}

AtomicOutputFile::~AtomicOutputFile() { discard(); }

void AtomicOutputFile::discard() {
  map_ = MappedFile();
  if (!temp_path_.empty()) ::unlink(temp_path_.c_str());
  temp_path_.clear();
}

Result<std::string> AtomicOutputFile::sync_and_release() {
  DWS_RETURN_IF_ERROR(map_.sync());
  map_ = MappedFile();
  return std::exchange(temp_path_, std::string());
}

Status AtomicOutputFile::commit() {
  DWS_ASSIGN_OR_RETURN(std::string temp, sync_and_release());
  Status st = rename_durable(temp, final_path_);
  if (!st.ok()) ::unlink(temp.c_str());
  return st;
}

Status write_file_atomic(const std::string& path, std::span<const std::byte> bytes) {
  DWS_ASSIGN_OR_RETURN(AtomicOutputFile out, AtomicOutputFile::create(path, bytes.size()));
  if (!bytes.empty()) std::memcpy(out.bytes().data(), bytes.data(), bytes.size());
  return out.commit();
}

Status write_file_atomic(const std::string& path, std::string_view text) {
  return write_file_atomic(path, std::as_bytes(std::span<const char>(text.data(), text.size())));
}

Result<std::string> read_file(const std::string& path, uint64_t max_size_bytes) {
  DWS_ASSIGN_OR_RETURN(MappedFile f, MappedFile::open(path, MappedFile::Mode::kReadOnly));
  if (f.size_bytes() > max_size_bytes) {
    return make_error(ErrorCode::kInvalidArgument, "'" + path + "' is " + std::to_string(f.size_bytes()) +
                                                       " bytes, above the limit of " + std::to_string(max_size_bytes));
  }
  auto b = f.bytes();
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

}  // namespace dws::io
