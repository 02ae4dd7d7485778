// The S3 store driver: "s3://bucket/prefix" over libcurl, requests signed with AWS Signature V4 by
// libcurl itself (CURLOPT_AWS_SIGV4). Contract in dws/store.h; configuration and consistency model in
// docs/store.md ("S3-compatible object stores").
#include "store/s3_store.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <functional>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>

#include "core/file_io.h"

namespace dws {

namespace {

std::string env_or(const char* name, const std::string& fallback = "") {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : fallback;
}

void ensure_curl_global_init() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

// RFC 3986 unreserved characters pass; everything else is %XX (for query values).
std::string url_encode(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

// The text of every <tag>...</tag> in an XML document, in order, with the five predefined entities
// decoded (S3 list responses need nothing more).
std::vector<std::string> xml_values(std::string_view xml, std::string_view tag) {
  std::vector<std::string> out;
  const std::string open = "<" + std::string(tag) + ">", close = "</" + std::string(tag) + ">";
  size_t at = 0;
  while ((at = xml.find(open, at)) != std::string_view::npos) {
    at += open.size();
    const size_t end = xml.find(close, at);
    if (end == std::string_view::npos) break;
    std::string v(xml.substr(at, end - at));
    std::string decoded;
    for (size_t i = 0; i < v.size(); ++i) {
      if (v[i] != '&') {
        decoded += v[i];
        continue;
      }
      static const std::pair<std::string_view, char> kEntities[] = {{"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&apos;", '\''}};
      bool matched = false;
      for (const auto& [name, c] : kEntities) {
        if (std::string_view(v).substr(i, name.size()) == name) {
          decoded += c;
          i += name.size() - 1;
          matched = true;
          break;
        }
      }
      if (!matched) decoded += '&';
    }
    out.push_back(std::move(decoded));
    at = end + close.size();
  }
  return out;
}

struct Response {
  long http_status = 0;
  CURLcode curl_code = CURLE_OK;
  std::string curl_error;
  std::string body;          // error bodies and small responses (not file downloads)
  uint64_t content_length = 0;
  bool has_content_length = false;
};

// What a request sends and where its response body goes.
struct Transfer {
  std::span<const std::byte> upload;   // PUT body from memory
  int upload_fd = -1;                  // or from a file (pread from offset 0)
  uint64_t upload_size = 0;
  uint64_t uploaded = 0;
  int download_fd = -1;                // GET body to a file; else into Response::body (bounded)
  uint64_t max_body_bytes = 1ull << 20;
  bool body_too_large = false;
  Response* response = nullptr;
  bool write_failed = false;
};

size_t on_read(char* buffer, size_t size, size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t want = std::min<uint64_t>(size * count, t->upload_size - t->uploaded);
  if (want == 0) return 0;
  if (t->upload_fd >= 0) {
    const ssize_t n = ::pread(t->upload_fd, buffer, want, static_cast<off_t>(t->uploaded));
    if (n <= 0) return CURL_READFUNC_ABORT;
    t->uploaded += static_cast<uint64_t>(n);
    return static_cast<size_t>(n);
  }
  std::memcpy(buffer, t->upload.data() + t->uploaded, want);
  t->uploaded += want;
  return want;
}

size_t on_write(char* data, size_t size, size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t n = size * count;
  if (t->download_fd >= 0 && t->response->http_status / 100 == 2) {
    size_t done = 0;
    while (done < n) {
      const ssize_t w = ::write(t->download_fd, data + done, n - done);
      if (w < 0) {
        if (errno == EINTR) continue;
        t->write_failed = true;
        return 0;  // aborts the transfer
      }
      done += static_cast<size_t>(w);
    }
    return n;
  }
  if (t->response->http_status / 100 != 2) {  // an error document: keep its first 64 KiB for the message
    t->response->body.append(data, std::min<size_t>(n, (64u << 10) - std::min<size_t>(t->response->body.size(), 64u << 10)));
    return n;
  }
  if (t->response->body.size() + n > t->max_body_bytes) {
    t->body_too_large = true;
    return 0;
  }
  t->response->body.append(data, n);
  return n;
}

// Records the status line as soon as headers arrive, so on_write knows whether the body is data.
size_t on_header(char* data, size_t size, size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const std::string_view line(data, size * count);
  if (line.rfind("HTTP/", 0) == 0) {
    const size_t sp = line.find(' ');
    if (sp != std::string_view::npos) t->response->http_status = std::strtol(std::string(line.substr(sp + 1, 3)).c_str(), nullptr, 10);
  } else if (line.size() > 15 && strncasecmp(line.data(), "content-length:", 15) == 0) {
    t->response->content_length = std::strtoull(std::string(line.substr(15)).c_str(), nullptr, 10);
    t->response->has_content_length = true;
  }
  return size * count;
}

bool retryable(const Response& r) {
  if (r.curl_code != CURLE_OK) {
    switch (r.curl_code) {
      case CURLE_COULDNT_CONNECT: case CURLE_COULDNT_RESOLVE_HOST: case CURLE_OPERATION_TIMEDOUT:
      case CURLE_SEND_ERROR: case CURLE_RECV_ERROR: case CURLE_GOT_NOTHING: case CURLE_PARTIAL_FILE:
      case CURLE_HTTP2: case CURLE_HTTP2_STREAM:
        return true;
      default:
        return false;
    }
  }
  return r.http_status >= 500 || r.http_status == 429 || r.http_status == 408;
}

}  // namespace

Result<S3Config> S3Config::from_uri(const std::string& uri) {
  if (uri.rfind("s3://", 0) != 0) return make_error(ErrorCode::kInvalidArgument, "'" + uri + "' is not an s3:// URI");
  std::string rest = uri.substr(5);
  while (!rest.empty() && rest.back() == '/') rest.pop_back();
  S3Config c;
  const size_t slash = rest.find('/');
  c.bucket = rest.substr(0, slash);
  c.prefix = slash == std::string::npos ? "" : rest.substr(slash + 1);
  if (c.bucket.empty() || c.bucket.size() > 63 ||
      !std::all_of(c.bucket.begin(), c.bucket.end(), [](char ch) { return std::islower(static_cast<unsigned char>(ch)) || std::isdigit(static_cast<unsigned char>(ch)) || ch == '-' || ch == '.'; })) {
    return make_error(ErrorCode::kInvalidArgument, "store '" + uri + "': bucket '" + c.bucket + "' is not a valid S3 bucket name");
  }
  if (!c.prefix.empty()) {
    if (Status st = check_store_key(c.prefix); !st.ok()) return st.with_context("store '" + uri + "': prefix");
  }
  c.endpoint = env_or("AWS_ENDPOINT_URL_S3", env_or("AWS_ENDPOINT_URL"));
  c.region = env_or("AWS_REGION", env_or("AWS_DEFAULT_REGION", "us-east-1"));
  c.access_key = env_or("AWS_ACCESS_KEY_ID");
  c.secret_key = env_or("AWS_SECRET_ACCESS_KEY");
  c.session_token = env_or("AWS_SESSION_TOKEN");
  const std::string addressing = env_or("DWS_S3_ADDRESSING", c.endpoint.empty() ? "virtual" : "path");
  if (addressing != "path" && addressing != "virtual") {
    return make_error(ErrorCode::kInvalidArgument, "DWS_S3_ADDRESSING='" + addressing + "': expected 'path' or 'virtual'");
  }
  c.path_style = addressing == "path";
  c.verify_tls = env_or("DWS_S3_INSECURE") != "1";
  if (const std::string s = env_or("DWS_S3_RETRY_SECONDS"); !s.empty()) c.retry_seconds = std::strtod(s.c_str(), nullptr);
  if (c.endpoint.empty()) c.endpoint = "https://s3." + c.region + ".amazonaws.com";
  while (!c.endpoint.empty() && c.endpoint.back() == '/') c.endpoint.pop_back();
  if (c.endpoint.rfind("http://", 0) != 0 && c.endpoint.rfind("https://", 0) != 0) {
    return make_error(ErrorCode::kInvalidArgument, "S3 endpoint '" + c.endpoint + "' must start with http:// or https://");
  }
  if (c.access_key.empty() != c.secret_key.empty()) {
    return make_error(ErrorCode::kInvalidArgument, "S3 credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together");
  }
  return c;
}

class S3Store final : public Store {
 public:
  explicit S3Store(S3Config config) : c_(std::move(config)) { ensure_curl_global_init(); }

  Status put(std::string_view key, std::span<const std::byte> data) override {
    DWS_RETURN_IF_ERROR(check_store_key(key));
    Transfer t;
    t.upload = data;
    t.upload_size = data.size();
    Response r = perform("PUT", object_url(key), {}, t);
    return expect_2xx(r, "put", key);
  }

  Status put_file(std::string_view key, const std::string& local_path) override {
    DWS_RETURN_IF_ERROR(check_store_key(key));
    const int fd = ::open(local_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return make_error(ErrorCode::kIo, "open '" + local_path + "': " + io::errno_text(errno));
    struct stat st {};
    ::fstat(fd, &st);
    Transfer t;
    t.upload_fd = fd;
    t.upload_size = static_cast<uint64_t>(st.st_size);
    Response r = perform("PUT", object_url(key), {}, t);
    ::close(fd);
    return expect_2xx(r, "put", key);
  }

  Status put_if_absent(std::string_view key, std::span<const std::byte> data) override {
    DWS_RETURN_IF_ERROR(check_store_key(key));
    Transfer t;
    t.upload = data;
    t.upload_size = data.size();
    Response r = perform("PUT", object_url(key), {"If-None-Match: *"}, t);
    // 412: it exists. 409: a concurrent conditional write is in flight (AWS); the other one wins.
    if (r.curl_code == CURLE_OK && (r.http_status == 412 || r.http_status == 409)) {
      return make_error(ErrorCode::kExists, describe() + ": " + std::string(key) + " already exists");
    }
    return expect_2xx(r, "put_if_absent", key);
  }

  Result<std::vector<std::byte>> get(std::string_view key, uint64_t max_size_bytes) override {
    DWS_RETURN_IF_ERROR(check_store_key(key));
    Transfer t;
    t.max_body_bytes = max_size_bytes;
    Response r = perform("GET", object_url(key), {}, t);
    if (t.body_too_large || (r.has_content_length && r.http_status == 200 && r.content_length > max_size_bytes)) {
      return make_error(ErrorCode::kInvalidArgument, describe() + ": " + std::string(key) + " is larger than " + std::to_string(max_size_bytes) + " bytes");
    }
    DWS_RETURN_IF_ERROR(expect_2xx(r, "get", key));
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
    Transfer t;
    t.max_body_bytes = length;
    Response r = perform("GET", object_url(key), {"Range: bytes=" + std::to_string(offset) + "-" + std::to_string(offset + length - 1)}, t);
    DWS_RETURN_IF_ERROR(expect_2xx(r, "get_range", key));
    if (r.body.size() != length) {
      return make_error(ErrorCode::kIo, describe() + ": ranged read of " + std::string(key) + " returned " + std::to_string(r.body.size()) +
                                            " bytes, asked " + std::to_string(length));
    }
    const auto* p = reinterpret_cast<const std::byte*>(r.body.data());
    return std::vector<std::byte>(p, p + r.body.size());
  }

  Status get_file(std::string_view key, const std::string& local_path) override {
    DWS_RETURN_IF_ERROR(check_store_key(key));
    const std::string temp = io::temp_name_for(local_path);
    const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return make_error(ErrorCode::kIo, "create '" + temp + "': " + io::errno_text(errno));
    Transfer t;
    t.download_fd = fd;
    Response r = perform("GET", object_url(key), {}, t, [&] {
      // A retry starts the file over.
      (void)::ftruncate(fd, 0);
      (void)::lseek(fd, 0, SEEK_SET);
    });
    Status st = t.write_failed ? make_error(ErrorCode::kIo, "write '" + temp + "': " + io::errno_text(errno)) : expect_2xx(r, "get", key);
    if (st.ok() && ::fsync(fd) != 0) st = make_error(ErrorCode::kIo, "fsync '" + temp + "': " + io::errno_text(errno));
    ::close(fd);
    if (st.ok()) st = io::rename_durable(temp, local_path);
    if (!st.ok()) ::unlink(temp.c_str());
    return st;
  }

  Result<std::optional<ObjectInfo>> stat(std::string_view key) override {
    DWS_RETURN_IF_ERROR(check_store_key(key));
    Transfer t;
    Response r = perform("HEAD", object_url(key), {}, t);
    if (r.curl_code == CURLE_OK && r.http_status == 404) return std::optional<ObjectInfo>();
    DWS_RETURN_IF_ERROR(expect_2xx(r, "stat", key));
    return std::optional<ObjectInfo>(ObjectInfo{std::string(key), r.content_length});
  }

  Result<std::vector<ObjectInfo>> list(std::string_view prefix) override {
    std::vector<ObjectInfo> out;
    std::string token;
    for (;;) {
      std::string query = "list-type=2&prefix=" + url_encode(full_key(prefix));
      if (!token.empty()) query += "&continuation-token=" + url_encode(token);
      Transfer t;
      t.max_body_bytes = 64ull << 20;
      Response r = perform("GET", bucket_url() + "?" + query, {}, t);
      DWS_RETURN_IF_ERROR(expect_2xx(r, "list", prefix));
      const auto keys = xml_values(r.body, "Key");
      const auto sizes = xml_values(r.body, "Size");
      if (keys.size() != sizes.size()) return make_error(ErrorCode::kIo, describe() + ": malformed list response");
      const std::string root = c_.prefix.empty() ? "" : c_.prefix + "/";
      for (size_t i = 0; i < keys.size(); ++i) {
        if (keys[i].rfind(root, 0) != 0) continue;
        std::string key = keys[i].substr(root.size());
        if (!check_store_key(key).ok()) continue;  // not something dws wrote (e.g. a "folder" marker)
        out.push_back({std::move(key), std::strtoull(sizes[i].c_str(), nullptr, 10)});
      }
      const auto truncated = xml_values(r.body, "IsTruncated");
      const auto next = xml_values(r.body, "NextContinuationToken");
      if (truncated.empty() || truncated[0] != "true" || next.empty()) break;
      token = next[0];
    }
    std::sort(out.begin(), out.end(), [](const ObjectInfo& a, const ObjectInfo& b) { return a.key < b.key; });
    return out;
  }

  Status remove(std::string_view key) override {
    DWS_RETURN_IF_ERROR(check_store_key(key));
    Transfer t;
    Response r = perform("DELETE", object_url(key), {}, t);
    if (r.curl_code == CURLE_OK && r.http_status == 404) return Status::Ok();
    return expect_2xx(r, "remove", key);
  }

  std::string describe() const override { return "s3://" + c_.bucket + (c_.prefix.empty() ? "" : "/" + c_.prefix); }

 private:
  std::string full_key(std::string_view key) const { return c_.prefix.empty() ? std::string(key) : c_.prefix + "/" + std::string(key); }

  std::string bucket_url() const {
    if (c_.path_style) return c_.endpoint + "/" + c_.bucket;
    const size_t scheme_end = c_.endpoint.find("://") + 3;
    return c_.endpoint.substr(0, scheme_end) + c_.bucket + "." + c_.endpoint.substr(scheme_end);
  }
  // Keys and the prefix use only [A-Za-z0-9._-/] (check_store_key), which need no escaping in a path.
  std::string object_url(std::string_view key) const { return bucket_url() + "/" + full_key(key); }

  Status expect_2xx(const Response& r, const char* op, std::string_view key) const {
    const std::string what = describe() + ": " + op + " " + std::string(key);
    if (r.curl_code != CURLE_OK) return make_error(ErrorCode::kIo, what + ": " + r.curl_error);
    if (r.http_status / 100 == 2) return Status::Ok();
    std::string detail;
    const auto code = xml_values(r.body, "Code");
    const auto message = xml_values(r.body, "Message");
    if (!code.empty()) detail = " " + code[0];
    if (!message.empty()) detail += ": " + message[0];
    if (r.http_status == 404) return make_error(ErrorCode::kNotFound, what + ": no such object (HTTP 404" + detail + ")");
    if (r.http_status == 401 || r.http_status == 403) {
      return make_error(ErrorCode::kIo, what + ": access denied (HTTP " + std::to_string(r.http_status) + detail +
                                            "); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket policy");
    }
    return make_error(ErrorCode::kIo, what + ": HTTP " + std::to_string(r.http_status) + detail);
  }

  // One request with retries: connection errors, 5xx, 429 and 408 are retried with exponential
  // backoff and full jitter until retry_seconds have passed; anything else returns at once.
  Response perform(const char* method, const std::string& url, const std::vector<std::string>& headers, Transfer& t,
                   const std::function<void()>& before_retry = {}) {
    using Clock = std::chrono::steady_clock;
    const auto deadline = Clock::now() + std::chrono::duration<double>(c_.retry_seconds);
    thread_local std::mt19937_64 rng(std::random_device{}());
    double backoff_s = 0.05;
    for (int attempt = 0;; ++attempt) {
      Response r = perform_once(method, url, headers, t);
      if (!retryable(r) || Clock::now() + std::chrono::duration<double>(backoff_s) >= deadline) return r;
      std::this_thread::sleep_for(std::chrono::duration<double>(std::uniform_real_distribution<double>(0, backoff_s)(rng)));
      backoff_s = std::min(backoff_s * 2, 5.0);
      t.uploaded = 0;
      if (before_retry) before_retry();
    }
  }

  Response perform_once(const char* method, const std::string& url, const std::vector<std::string>& headers, Transfer& t) {
    Response r;
    t.response = &r;
    t.body_too_large = false;
    CURL* h = curl_easy_init();
    if (!h) {
      r.curl_code = CURLE_FAILED_INIT;
      r.curl_error = "curl_easy_init failed";
      return r;
    }
    char error[CURL_ERROR_SIZE] = {0};
    curl_slist* list = nullptr;
    for (const auto& hd : headers) list = curl_slist_append(list, hd.c_str());
    // Payload hashes are not computed: integrity is end to end (manifests carry XXH3-128 of every object).
    list = curl_slist_append(list, "x-amz-content-sha256: UNSIGNED-PAYLOAD");
    if (!c_.session_token.empty()) list = curl_slist_append(list, ("x-amz-security-token: " + c_.session_token).c_str());
    curl_easy_setopt(h, CURLOPT_URL, url.c_str());
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, error);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);     // abort a transfer stalled for 60 s
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, 60L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, c_.verify_tls ? 1L : 0L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, c_.verify_tls ? 2L : 0L);
    if (!c_.access_key.empty()) {
      const std::string sigv4 = "aws:amz:" + c_.region + ":s3";
      curl_easy_setopt(h, CURLOPT_AWS_SIGV4, sigv4.c_str());
      curl_easy_setopt(h, CURLOPT_USERNAME, c_.access_key.c_str());
      curl_easy_setopt(h, CURLOPT_PASSWORD, c_.secret_key.c_str());
    }
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &t);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &t);
    const std::string m = method;
    if (m == "PUT") {
      curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
      curl_easy_setopt(h, CURLOPT_READFUNCTION, on_read);
      curl_easy_setopt(h, CURLOPT_READDATA, &t);
      curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(t.upload_size));
      // "Expect:" (to skip the 100-continue round trip) must not be used: libcurl 7.88 signs the header
      // it then does not send, and the server rejects the signature.
    } else if (m == "HEAD") {
      curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    } else if (m != "GET") {
      curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    }
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, list);
    r.curl_code = curl_easy_perform(h);
    if (r.curl_code != CURLE_OK && !(r.curl_code == CURLE_WRITE_ERROR && t.body_too_large)) {
      r.curl_error = std::string(curl_easy_strerror(r.curl_code)) + (error[0] ? std::string(" (") + error + ")" : "");
    } else {
      r.curl_code = CURLE_OK;
    }
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    if (status) r.http_status = status;
    curl_slist_free_all(list);
    curl_easy_cleanup(h);
    return r;
  }

  S3Config c_;
};

Result<std::unique_ptr<Store>> open_s3_store(const S3Config& config) {
  return std::unique_ptr<Store>(std::make_unique<S3Store>(config));
}

}  // namespace dws
