// Signed S3 requests over libcurl with bounded retries. Contract in store/s3_http.h.
#include "store/s3_http.h"

#include <curl/curl.h>
#include <strings.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <mutex>
#include <optional>
#include <random>
#include <thread>

#include "core/file_io.h"

namespace dws::s3 {

namespace {

void ensure_curl_global_init() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

// Easy handles are pooled so that their connections (and TLS sessions) are reused across requests and
// threads; curl_easy_reset keeps a handle's connection cache.
class HandlePool {
 public:
  ~HandlePool() {
    for (CURL* h : free_) curl_easy_cleanup(h);
  }
  CURL* acquire() {
    {
      std::lock_guard lock(mu_);
      if (!free_.empty()) {
        CURL* h = free_.back();
        free_.pop_back();
        curl_easy_reset(h);
        return h;
      }
    }
    return curl_easy_init();
  }
  void release(CURL* h) {
    std::lock_guard lock(mu_);
    if (free_.size() < 64) free_.push_back(h);
    else curl_easy_cleanup(h);
  }

 private:
  std::mutex mu_;
  std::vector<CURL*> free_;
};

HandlePool& pool() {
  static HandlePool* p = new HandlePool();  // never destroyed: requests may run during static teardown
  return *p;
}

// The state of one attempt, shared by the callbacks.
struct Attempt {
  const Request* request = nullptr;
  Response* response = nullptr;
  uint64_t sent = 0;        // body bytes handed to curl
  uint64_t received = 0;    // 2xx body bytes written to the sink
  int64_t* reported = nullptr;  // bytes reported through on_bytes, over all attempts
};

size_t on_read(char* buffer, size_t size, size_t count, void* user) {
  auto* a = static_cast<Attempt*>(user);
  const Request& q = *a->request;
  const size_t want = static_cast<size_t>(std::min<uint64_t>(size * count, q.body_size - a->sent));
  if (want == 0) return 0;
  if (q.body_fd >= 0) {
    const ssize_t n = ::pread(q.body_fd, buffer, want, static_cast<off_t>(q.body_fd_offset + a->sent));
    if (n <= 0) return CURL_READFUNC_ABORT;
    a->sent += static_cast<uint64_t>(n);
    return static_cast<size_t>(n);
  }
  std::memcpy(buffer, q.body.data() + a->sent, want);
  a->sent += want;
  return want;
}

// libcurl rewinds the body when it must send a request again by itself (a reused connection that
// turned out dead, an auth round trip); without this it fails with CURLE_SEND_FAIL_REWIND.
int on_seek(void* user, curl_off_t offset, int origin) {
  auto* a = static_cast<Attempt*>(user);
  if (origin != SEEK_SET || offset < 0 || static_cast<uint64_t>(offset) > a->request->body_size) return CURL_SEEKFUNC_FAIL;
  a->sent = static_cast<uint64_t>(offset);
  return CURL_SEEKFUNC_OK;
}

size_t on_write(char* data, size_t size, size_t count, void* user) {
  auto* a = static_cast<Attempt*>(user);
  Response& r = *a->response;
  const Request& q = *a->request;
  const size_t n = size * count;
  if (r.http_status / 100 != 2) {  // an error document: keep its first 64 KiB for the message
    const size_t room = (64u << 10) - std::min<size_t>(r.body.size(), 64u << 10);
    r.body.append(data, std::min(n, room));
    return n;
  }
  if (q.sink_fd >= 0) {
    size_t done = 0;
    while (done < n) {
      const ssize_t w = ::pwrite(q.sink_fd, data + done, n - done, static_cast<off_t>(q.sink_fd_offset + a->received + done));
      if (w < 0) {
        if (errno == EINTR) continue;
        r.sink_errno = errno;
        return 0;  // aborts the transfer
      }
      done += static_cast<size_t>(w);
    }
    a->received += n;
    r.sink_bytes = a->received;
    return n;
  }
  if (r.body.size() + n > q.max_body_bytes) {
    r.body_too_large = true;
    return 0;
  }
  r.body.append(data, n);
  return n;
}

// Records the status line as soon as it arrives (so on_write knows whether the body is data), the
// length and the ETag.
size_t on_header(char* data, size_t size, size_t count, void* user) {
  auto* a = static_cast<Attempt*>(user);
  Response& r = *a->response;
  std::string_view line(data, size * count);
  while (!line.empty() && (line.back() == '\r' || line.back() == '\n')) line.remove_suffix(1);
  const auto value_of = [&](std::string_view name) -> std::optional<std::string> {
    if (line.size() <= name.size() || strncasecmp(line.data(), name.data(), name.size()) != 0) return std::nullopt;
    std::string_view v = line.substr(name.size());
    while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
    return std::string(v);
  };
  if (line.rfind("HTTP/", 0) == 0) {
    const size_t sp = line.find(' ');
    if (sp != std::string_view::npos) r.http_status = std::strtol(std::string(line.substr(sp + 1, 3)).c_str(), nullptr, 10);
    r.has_content_length = false;
    r.etag.clear();
  } else if (auto v = value_of("content-length:")) {
    r.content_length = std::strtoull(v->c_str(), nullptr, 10);
    r.has_content_length = true;
  } else if (auto e = value_of("etag:")) {
    r.etag = *e;
  }
  return size * count;
}

int on_progress(void* user, curl_off_t /*dltotal*/, curl_off_t dlnow, curl_off_t /*ultotal*/, curl_off_t ulnow) {
  auto* a = static_cast<Attempt*>(user);
  const Request& q = *a->request;
  const bool upload = q.body_size > 0;
  const int64_t now = upload ? static_cast<int64_t>(ulnow) : static_cast<int64_t>(dlnow);
  // Download progress counts only the data of a 2xx answer (an error document is not progress).
  if (!upload && a->response->http_status / 100 != 2) return 0;
  if (now != *a->reported) {
    q.on_bytes(now - *a->reported);
    *a->reported = now;
  }
  return 0;
}

bool retryable(const Response& r) {
  if (r.sink_errno != 0 || r.body_too_large) return false;
  if (r.curl_code != CURLE_OK) {
    switch (r.curl_code) {
      case CURLE_COULDNT_CONNECT: case CURLE_COULDNT_RESOLVE_HOST: case CURLE_COULDNT_RESOLVE_PROXY:
      case CURLE_OPERATION_TIMEDOUT: case CURLE_SEND_ERROR: case CURLE_RECV_ERROR: case CURLE_GOT_NOTHING:
      case CURLE_PARTIAL_FILE: case CURLE_HTTP2: case CURLE_HTTP2_STREAM: case CURLE_SSL_CONNECT_ERROR:
        return true;
      default:
        return false;
    }
  }
  return r.http_status >= 500 || r.http_status == 429 || r.http_status == 408;
}

}  // namespace

Client::Client(S3Config config) : c_(std::move(config)) { ensure_curl_global_init(); }

std::string Client::bucket_url() const {
  if (c_.path_style) return c_.endpoint + "/" + c_.bucket;
  const size_t scheme_end = c_.endpoint.find("://") + 3;
  return c_.endpoint.substr(0, scheme_end) + c_.bucket + "." + c_.endpoint.substr(scheme_end);
}

std::string Client::full_key(std::string_view key) const {
  return c_.prefix.empty() ? std::string(key) : c_.prefix + "/" + std::string(key);
}

std::string Client::object_url(std::string_view key) const { return bucket_url() + "/" + full_key(key); }

Response Client::perform(const Request& request) const {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::duration<double>(c_.retry_seconds);
  thread_local std::mt19937_64 rng(std::random_device{}());
  double backoff_s = 0.05;
  int64_t reported = 0;
  for (int attempt = 1;; ++attempt) {
    Response r = perform_once(request, reported);
    r.attempts = attempt;
    r.seconds = std::chrono::duration<double>(Clock::now() - start).count();
    const double remaining_s = std::chrono::duration<double>(deadline - Clock::now()).count();
    if (!retryable(r) || remaining_s <= 0) return r;
    if (reported != 0 && request.on_bytes) {  // the retry starts over
      request.on_bytes(-reported);
      reported = 0;
    }
    // Full jitter, never sleeping past the deadline: the last attempt goes out at the deadline.
    const double sleep_s = std::min(std::uniform_real_distribution<double>(0, backoff_s)(rng), remaining_s);
    std::this_thread::sleep_for(std::chrono::duration<double>(sleep_s));
    backoff_s = std::min(backoff_s * 2, 5.0);
  }
}

Response Client::perform_once(const Request& q, int64_t& reported) const {
  Response r;
  Attempt a{&q, &r, 0, 0, &reported};
  CURL* h = pool().acquire();
  if (!h) {
    r.curl_code = CURLE_FAILED_INIT;
    r.curl_error = "curl_easy_init failed";
    return r;
  }
  char error[CURL_ERROR_SIZE] = {0};
  curl_slist* list = nullptr;
  for (const auto& hd : q.headers) list = curl_slist_append(list, hd.c_str());
  // Payload hashes are not computed: integrity is end to end (manifests carry XXH3-128 of every object).
  list = curl_slist_append(list, "x-amz-content-sha256: UNSIGNED-PAYLOAD");
  if (!c_.session_token.empty()) list = curl_slist_append(list, ("x-amz-security-token: " + c_.session_token).c_str());
  curl_easy_setopt(h, CURLOPT_URL, q.url.c_str());
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, error);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
  curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);  // abort a transfer stalled for 60 s (then retried)
  curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, 60L);
  curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, c_.verify_tls ? 1L : 0L);
  curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, c_.verify_tls ? 2L : 0L);
  const std::string sigv4 = "aws:amz:" + c_.region + ":s3";
  if (!c_.access_key.empty()) {
    curl_easy_setopt(h, CURLOPT_AWS_SIGV4, sigv4.c_str());
    curl_easy_setopt(h, CURLOPT_USERNAME, c_.access_key.c_str());
    curl_easy_setopt(h, CURLOPT_PASSWORD, c_.secret_key.c_str());
  }
  curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(h, CURLOPT_HEADERDATA, &a);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_write);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &a);
  if (q.on_bytes) {
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(h, CURLOPT_XFERINFODATA, &a);
  }
  const std::string_view m = q.method;
  if (m == "PUT" || m == "POST") {
    curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);  // streams the body through on_read; POST via CUSTOMREQUEST
    curl_easy_setopt(h, CURLOPT_READFUNCTION, on_read);
    curl_easy_setopt(h, CURLOPT_READDATA, &a);
    curl_easy_setopt(h, CURLOPT_SEEKFUNCTION, on_seek);
    curl_easy_setopt(h, CURLOPT_SEEKDATA, &a);
    curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(q.body_size));
    if (m == "POST") curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, "POST");
    // "Expect:" (to skip the 100-continue round trip) must not be used: libcurl 7.88 signs the header
    // it then does not send, and the server rejects the signature. Instead, small bodies do not wait for
    // "100 Continue" (a server that does not answer it at once would cost each request 1 s); large ones
    // wait up to 1 s, so that a refusal arrives before the body is sent.
    if (q.body_size < (1u << 20)) curl_easy_setopt(h, CURLOPT_EXPECT_100_TIMEOUT_MS, 0L);
  } else if (m == "HEAD") {
    curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
  } else if (m != "GET") {
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, q.method);
  }
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, list);
  const CURLcode code = curl_easy_perform(h);
  if (code != CURLE_OK && !(code == CURLE_WRITE_ERROR && (r.body_too_large || r.sink_errno != 0))) {
    r.curl_code = code;
    r.curl_error = std::string(curl_easy_strerror(code)) + (error[0] ? std::string(" (") + error + ")" : "");
  }
  long status = 0;
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
  if (status) r.http_status = status;
  curl_slist_free_all(list);
  // A handle whose transfer failed may hold a broken connection; start the next request on a fresh one.
  if (code == CURLE_OK) pool().release(h);
  else curl_easy_cleanup(h);
  return r;
}

Status Client::check(const Response& r, const std::string& what) const {
  if (r.sink_errno != 0) return make_error(ErrorCode::kIo, what + ": writing the download: " + io::errno_text(r.sink_errno));
  if (r.body_too_large) return make_error(ErrorCode::kInvalidArgument, what + ": the answer is larger than expected");
  char tries[96];
  std::snprintf(tries, sizeof tries, " (%d attempt%s over %.1f s; DWS_S3_RETRY_SECONDS=%g)", r.attempts, r.attempts == 1 ? "" : "s",
                r.seconds, c_.retry_seconds);
  if (r.curl_code != CURLE_OK) {
    const bool transient = retryable(r);
    return make_error(transient ? ErrorCode::kUnavailable : ErrorCode::kIo,
                      what + ": " + (transient ? "cannot reach " + c_.endpoint + ": " : "") + r.curl_error + (transient ? tries : ""));
  }
  if (r.http_status / 100 == 2) return Status::Ok();
  std::string detail;
  const auto code = xml_values(r.body, "Code");
  const auto message = xml_values(r.body, "Message");
  if (!code.empty()) detail = " " + code[0];
  if (!message.empty()) detail += ": " + message[0];
  const std::string http = "HTTP " + std::to_string(r.http_status) + detail;
  if (r.http_status == 404) return make_error(ErrorCode::kNotFound, what + ": no such object or bucket (" + http + ")");
  if (r.http_status == 401 || r.http_status == 403) {
    return make_error(ErrorCode::kDenied, what + ": access denied (" + http + "); credentials from " + c_.credentials_source +
                                              ", region " + c_.region + "; check them and the bucket policy");
  }
  if (retryable(r)) return make_error(ErrorCode::kUnavailable, what + ": " + c_.endpoint + " kept failing: " + http + tries);
  return make_error(ErrorCode::kIo, what + ": " + http);
}

std::vector<std::string> xml_values(std::string_view xml, std::string_view tag) {
  std::vector<std::string> out;
  std::string open = "<", close = "</";  // (built by appending: gcc 12 warns falsely on "<" + tag + ">")
  open.append(tag).push_back('>');
  close.append(tag).push_back('>');
  size_t at = 0;
  while ((at = xml.find(open, at)) != std::string_view::npos) {
    at += open.size();
    const size_t end = xml.find(close, at);
    if (end == std::string_view::npos) break;
    const std::string_view v = xml.substr(at, end - at);
    std::string decoded;
    for (size_t i = 0; i < v.size(); ++i) {
      if (v[i] != '&') {
        decoded += v[i];
        continue;
      }
      static const std::pair<std::string_view, char> kEntities[] = {{"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&apos;", '\''}};
      bool matched = false;
      for (const auto& [name, c] : kEntities) {
        if (v.substr(i, name.size()) == name) {
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

}  // namespace dws::s3
