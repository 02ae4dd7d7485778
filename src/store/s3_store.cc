// The S3 store driver: the Store contract (dws/store.h) over S3's REST API. Objects larger than one part
// go up as parallel multipart uploads and come down as parallel ranged GETs written straight into the
// destination file, so memory stays bounded by the transfer buffers whatever the object size. Requests,
// signing and retries are store/s3_http.h; configuration is store/s3_config.h; the consistency model is
// docs/store.md ("S3-compatible object stores").
#include "store/s3_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <thread>

#include "core/file_io.h"
#include "store/s3_http.h"

namespace dws {

namespace {

using s3::Request;
using s3::Response;

// An object's bytes for an upload: memory, or a file descriptor.
struct Body {
  std::span<const std::byte> memory;
  int fd = -1;
  uint64_t size = 0;

  // Fills the request's body with bytes [offset, offset + length).
  void into(Request& q, uint64_t offset, uint64_t length) const {
    if (fd >= 0) {
      q.body_fd = fd;
      q.body_fd_offset = offset;
    } else {
      q.body = memory.subspan(offset, length);
    }
    q.body_size = length;
  }
};

// Sums the bytes of one object's transfers (several parts at once) and reports them.
class ObjectProgress {
 public:
  ObjectProgress(const StoreOptions& options, std::string_view key, bool upload, uint64_t total)
      : callback_(options.on_progress), key_(key), upload_(upload), total_(total) {}

  // The request's on_bytes, or empty when nobody listens.
  std::function<void(int64_t)> sink() {
    if (!callback_) return {};
    return [this](int64_t delta) {
      const uint64_t done = done_.fetch_add(static_cast<uint64_t>(delta)) + static_cast<uint64_t>(delta);
      callback_(TransferProgress{key_, upload_, std::min(done, total_), total_});
    };
  }

 private:
  const std::function<void(const TransferProgress&)>& callback_;
  std::string key_;
  bool upload_;
  uint64_t total_;
  std::atomic<uint64_t> done_{0};
};

// Runs work(i) for i in [0, n) on up to `threads` threads (the caller's among them); stops handing out
// work after the first failure and returns it.
Status run_parts(size_t n, unsigned threads, const std::function<Status(size_t)>& work) {
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex mu;
  Status first;
  const auto worker = [&] {
    for (;;) {
      const size_t i = next.fetch_add(1);
      if (i >= n || failed.load()) return;
      Status st = work(i);
      if (!st.ok()) {
        std::lock_guard lock(mu);
        if (!failed.exchange(true)) first = std::move(st);
        return;
      }
    }
  };
  std::vector<std::thread> pool;
  const size_t extra = std::min<size_t>(threads, n) - (n > 0 ? 1 : 0);
  for (size_t t = 0; t < extra; ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  return first;
}

class S3Store final : public Store {
 public:
  S3Store(S3Config config, StoreOptions options) : http_(std::move(config)), options_(std::move(options)) {}

  Status put(std::string_view key, std::span<const std::byte> data) override {
    DWS_RETURN_IF_ERROR(check_store_key(key));
    return upload(key, Body{data, -1, data.size()});
  }

  Status put_file(std::string_view key, const std::string& local_path) override {
    DWS_RETURN_IF_ERROR(check_store_key(key));
    const int fd = ::open(local_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return make_error(ErrorCode::kIo, "open '" + local_path + "': " + io::errno_text(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const int e = errno;
      ::close(fd);
      return make_error(ErrorCode::kIo, "stat '" + local_path + "': " + io::errno_text(e));
    }
    Status result = upload(key, Body{{}, fd, static_cast<uint64_t>(st.st_size)});
    ::close(fd);
    return result;
  }

  Status put_if_absent(std::string_view key, std::span<const std::byte> data) override {
    DWS_RETURN_IF_ERROR(check_store_key(key));
    Request q;
    q.method = "PUT";
    q.url = http_.object_url(key);
    q.headers = {"If-None-Match: *"};
    q.body = data;
    q.body_size = data.size();
    const Response r = http_.perform(q);
    // 412: it exists. 409: a concurrent conditional write is in flight (AWS); the other one wins.
    if (r.transport_ok() && (r.http_status == 412 || r.http_status == 409)) {
      // The object may be our own: an earlier send of this request (our retry, or libcurl's own resend
      // on a fresh connection) wrote it and its answer was lost. Then we won. (Another writer's object
      // cannot be byte-identical: manifests carry a random token.)
      auto found = get(key, data.size());
      if (found.ok() && found->size() == data.size() && std::equal(found->begin(), found->end(), data.begin())) return Status::Ok();
      return make_error(ErrorCode::kExists, describe() + ": " + std::string(key) + " already exists");
    }
    return http_.check(r, what("put_if_absent", key));
  }

  Result<std::vector<std::byte>> get(std::string_view key, uint64_t max_size_bytes) override {
    DWS_RETURN_IF_ERROR(check_store_key(key));
    Request q;
    q.url = http_.object_url(key);
    q.max_body_bytes = max_size_bytes;
    const Response r = http_.perform(q);
    if (r.body_too_large || (r.ok_2xx() && r.has_content_length && r.content_length > max_size_bytes)) {
      return make_error(ErrorCode::kInvalidArgument, describe() + ": " + std::string(key) + " is larger than " + std::to_string(max_size_bytes) + " bytes");
    }
    DWS_RETURN_IF_ERROR(http_.check(r, what("get", key)));
    const auto* p = reinterpret_cast<const std::byte*>(r.body.data());
    return std::vector<std::byte>(p, p + r.body.size());
  }

  Result<std::vector<std::byte>> get_range(std::string_view key, uint64_t offset, uint64_t length) override {
    DWS_RETURN_IF_ERROR(check_store_key(key));
    DWS_ASSIGN_OR_RETURN(std::optional<ObjectInfo> info, stat(key));
    if (!info) return make_error(ErrorCode::kNotFound, describe() + ": no object " + std::string(key));
    if (offset > info->size_bytes || length > info->size_bytes - offset) {
      return make_error(ErrorCode::kInvalidArgument, describe() + ": range [" + std::to_string(offset) + ", +" + std::to_string(length) +
                                                         ") is past the end of " + std::string(key) + " (" + std::to_string(info->size_bytes) + " bytes)");
    }
    if (length == 0) return std::vector<std::byte>();
    Request q;
    q.url = http_.object_url(key);
    q.headers = {range_header(offset, length)};
    q.max_body_bytes = length;
    const Response r = http_.perform(q);
    DWS_RETURN_IF_ERROR(http_.check(r, what("get_range", key)));
    if (r.http_status != 206 || r.body.size() != length) {
      return make_error(ErrorCode::kIo, what("get_range", key) + ": asked bytes [" + std::to_string(offset) + ", +" + std::to_string(length) +
                                            "), got HTTP " + std::to_string(r.http_status) + " with " + std::to_string(r.body.size()) + " bytes");
    }
    const auto* p = reinterpret_cast<const std::byte*>(r.body.data());
    return std::vector<std::byte>(p, p + r.body.size());
  }

  Status get_file(std::string_view key, const std::string& local_path) override {
    DWS_RETURN_IF_ERROR(check_store_key(key));
    // The size and ETag first: large objects come down in parallel ranges, each conditional on the ETag
    // so that parts of two different objects can never be mixed.
    Request head;
    head.method = "HEAD";
    head.url = http_.object_url(key);
    const Response h = http_.perform(head);
    DWS_RETURN_IF_ERROR(http_.check(h, what("get", key)));
    const uint64_t size = h.content_length;
    const std::string temp = io::temp_name_for(local_path);
    const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return make_error(ErrorCode::kIo, "create '" + temp + "': " + io::errno_text(errno));
    ObjectProgress progress(options_, key, false, size);
    Status st;
    if (size <= http_.config().part_size_bytes || h.etag.empty()) {
      Request q;
      q.url = http_.object_url(key);
      q.sink_fd = fd;
      q.on_bytes = progress.sink();
      const Response r = http_.perform(q);
      st = http_.check(r, what("get", key));
      if (st.ok() && ::ftruncate(fd, static_cast<off_t>(r.sink_bytes)) != 0) st = make_error(ErrorCode::kIo, "truncate '" + temp + "': " + io::errno_text(errno));
    } else if (::ftruncate(fd, static_cast<off_t>(size)) != 0) {
      st = make_error(ErrorCode::kIo, "size '" + temp + "' to " + std::to_string(size) + " bytes: " + io::errno_text(errno));
    } else {
      const uint64_t part = http_.config().part_size_bytes;
      const size_t parts = static_cast<size_t>((size + part - 1) / part);
      st = run_parts(parts, http_.config().concurrency, [&](size_t i) -> Status {
        const uint64_t offset = i * part, length = std::min(part, size - offset);
        Request q;
        q.url = http_.object_url(key);
        q.headers = {range_header(offset, length), "If-Match: " + h.etag};
        q.sink_fd = fd;
        q.sink_fd_offset = offset;
        q.on_bytes = progress.sink();
        const Response r = http_.perform(q);
        if (r.transport_ok() && r.http_status == 412) {
          return make_error(ErrorCode::kIo, what("get", key) + ": the object changed during the download (ETag " + h.etag + " no longer matches)");
        }
        DWS_RETURN_IF_ERROR(http_.check(r, what("get", key)));
        if (r.http_status != 206 || r.sink_bytes != length) {
          return make_error(ErrorCode::kIo, what("get", key) + ": part " + std::to_string(i + 1) + " asked bytes [" + std::to_string(offset) +
                                                ", +" + std::to_string(length) + "), got HTTP " + std::to_string(r.http_status) + " with " +
                                                std::to_string(r.sink_bytes) + " bytes");
        }
        return Status::Ok();
      });
    }
    if (st.ok() && ::fsync(fd) != 0) st = make_error(ErrorCode::kIo, "fsync '" + temp + "': " + io::errno_text(errno));
    ::close(fd);
    if (st.ok()) st = io::rename_durable(temp, local_path);
    if (!st.ok()) ::unlink(temp.c_str());
    return st;
  }

  Result<std::optional<ObjectInfo>> stat(std::string_view key) override {
    DWS_RETURN_IF_ERROR(check_store_key(key));
    Request q;
    q.method = "HEAD";
    q.url = http_.object_url(key);
    const Response r = http_.perform(q);
    if (r.transport_ok() && r.http_status == 404) return std::optional<ObjectInfo>();
    DWS_RETURN_IF_ERROR(http_.check(r, what("stat", key)));
    return std::optional<ObjectInfo>(ObjectInfo{std::string(key), r.content_length});
  }

  Result<std::vector<ObjectInfo>> list(std::string_view prefix) override {
    std::vector<ObjectInfo> out;
    std::string token;
    const std::string root = http_.config().prefix.empty() ? "" : http_.config().prefix + "/";
    for (;;) {
      // Query parameters in sorted order: libcurl 7.88 signs the query string as given.
      std::string query = token.empty() ? "" : "continuation-token=" + s3::url_encode(token) + "&";
      query += "list-type=2&prefix=" + s3::url_encode(http_.full_key(prefix));
      Request q;
      q.url = http_.bucket_url() + "?" + query;
      q.max_body_bytes = 64ull << 20;
      const Response r = http_.perform(q);
      DWS_RETURN_IF_ERROR(http_.check(r, what("list", prefix)));
      const auto keys = s3::xml_values(r.body, "Key");
      const auto sizes = s3::xml_values(r.body, "Size");
      if (keys.size() != sizes.size()) return make_error(ErrorCode::kIo, what("list", prefix) + ": malformed list response");
      for (size_t i = 0; i < keys.size(); ++i) {
        if (keys[i].rfind(root, 0) != 0) continue;
        std::string key = keys[i].substr(root.size());
        if (!check_store_key(key).ok()) continue;  // not something dws wrote (e.g. a "folder" marker)
        out.push_back({std::move(key), std::strtoull(sizes[i].c_str(), nullptr, 10)});
      }
      const auto truncated = s3::xml_values(r.body, "IsTruncated");
      const auto next = s3::xml_values(r.body, "NextContinuationToken");
      if (truncated.empty() || truncated[0] != "true" || next.empty()) break;
      token = next[0];
    }
    std::sort(out.begin(), out.end(), [](const ObjectInfo& a, const ObjectInfo& b) { return a.key < b.key; });
    return out;
  }

  Status remove(std::string_view key) override {
    DWS_RETURN_IF_ERROR(check_store_key(key));
    Request q;
    q.method = "DELETE";
    q.url = http_.object_url(key);
    const Response r = http_.perform(q);
    if (r.transport_ok() && r.http_status == 404) return Status::Ok();
    return http_.check(r, what("remove", key));
  }

  std::string describe() const override {
    const S3Config& c = http_.config();
    return "s3://" + c.bucket + (c.prefix.empty() ? "" : "/" + c.prefix);
  }

 private:
  std::string what(const char* op, std::string_view key) const { return describe() + ": " + op + " " + std::string(key); }

  static std::string range_header(uint64_t offset, uint64_t length) {
    return "Range: bytes=" + std::to_string(offset) + "-" + std::to_string(offset + length - 1);
  }

  // One PUT up to a part's size; above it a multipart upload. Either way the object becomes visible
  // whole, at the end, or not at all.
  Status upload(std::string_view key, const Body& body) {
    ObjectProgress progress(options_, key, true, body.size);
    if (body.size <= http_.config().part_size_bytes) {
      Request q;
      q.method = "PUT";
      q.url = http_.object_url(key);
      q.on_bytes = progress.sink();
      body.into(q, 0, body.size);
      return http_.check(http_.perform(q), what("put", key));
    }
    return multipart_upload(key, body, progress);
  }

  Status multipart_upload(std::string_view key, const Body& body, ObjectProgress& progress) {
    const std::string op = what("put", key);
    Request create;
    create.method = "POST";
    create.url = http_.object_url(key) + "?uploads=";
    create.headers = {"Content-Type: application/octet-stream"};
    const Response created = http_.perform(create);
    DWS_RETURN_IF_ERROR(http_.check(created, op + ": starting a multipart upload"));
    const auto ids = s3::xml_values(created.body, "UploadId");
    if (ids.empty() || ids[0].empty()) return make_error(ErrorCode::kIo, op + ": the answer to CreateMultipartUpload has no UploadId");
    const std::string upload_query = "uploadId=" + s3::url_encode(ids[0]);

    // S3 allows at most 10,000 parts; larger objects get larger parts.
    const uint64_t part = std::max<uint64_t>(http_.config().part_size_bytes, (body.size + 9999) / 10000);
    const size_t parts = static_cast<size_t>((body.size + part - 1) / part);
    std::vector<std::string> etags(parts);
    Status st = run_parts(parts, http_.config().concurrency, [&](size_t i) -> Status {
      const uint64_t offset = i * part;
      Request q;
      q.method = "PUT";
      q.url = http_.object_url(key) + "?partNumber=" + std::to_string(i + 1) + "&" + upload_query;
      q.on_bytes = progress.sink();
      body.into(q, offset, std::min(part, body.size - offset));
      const Response r = http_.perform(q);
      DWS_RETURN_IF_ERROR(http_.check(r, op + ": part " + std::to_string(i + 1) + " of " + std::to_string(parts)));
      if (r.etag.empty()) return make_error(ErrorCode::kIo, op + ": part " + std::to_string(i + 1) + ": the answer has no ETag");
      etags[i] = r.etag;
      return Status::Ok();
    });
    if (st.ok()) {
      std::string xml = "<CompleteMultipartUpload>";
      for (size_t i = 0; i < parts; ++i) {
        std::string etag;
        for (char c : etags[i]) etag += c == '"' ? std::string("&quot;") : std::string(1, c);
        xml += "<Part><PartNumber>" + std::to_string(i + 1) + "</PartNumber><ETag>" + etag + "</ETag></Part>";
      }
      xml += "</CompleteMultipartUpload>";
      Request complete;
      complete.method = "POST";
      complete.url = http_.object_url(key) + "?" + upload_query;
      complete.headers = {"Content-Type: application/xml"};
      complete.body = std::span(reinterpret_cast<const std::byte*>(xml.data()), xml.size());
      complete.body_size = xml.size();
      const Response r = http_.perform(complete);
      if (r.transport_ok() && r.http_status == 404) {
        // NoSuchUpload: an earlier send (ours or libcurl's resend) may have completed it and lost the
        // answer; then the object is there whole. (Only this upload writes this key: keys carry a token.)
        auto info = stat(key);
        if (info.ok() && *info && (*info)->size_bytes == body.size) return Status::Ok();
      }
      st = http_.check(r, op + ": completing the multipart upload");
      // S3 may answer 200 and report the failure in the body.
      if (st.ok() && r.body.find("<Error>") != std::string::npos) {
        const auto code = s3::xml_values(r.body, "Code");
        const auto message = s3::xml_values(r.body, "Message");
        st = make_error(ErrorCode::kIo, op + ": completing the multipart upload failed: " + (code.empty() ? "" : code[0]) +
                                            (message.empty() ? "" : ": " + message[0]));
      }
    }
    if (!st.ok()) {
      Request abort;
      abort.method = "DELETE";
      abort.url = http_.object_url(key) + "?" + upload_query;
      (void)http_.perform(abort);  // best effort; a bucket lifecycle rule reclaims what remains
    }
    return st;
  }

  s3::Client http_;
  StoreOptions options_;
};

}  // namespace

Result<std::unique_ptr<Store>> open_s3_store(const S3Config& config, const StoreOptions& options) {
  return std::unique_ptr<Store>(std::make_unique<S3Store>(config, options));
}

}  // namespace dws
