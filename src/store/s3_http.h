// One signed HTTP request to an S3 endpoint, with retries (internal to the S3 driver).
//
// libcurl does the transport and signs every request with AWS Signature V4 (CURLOPT_AWS_SIGV4); this
// layer adds the body sources and sinks the driver needs (memory, or a byte range of a file, so that no
// object is ever held in memory), progress reporting, bounded retries, and the mapping of the final
// answer to a Status.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dws/status.h"
#include "store/s3_config.h"

namespace dws::s3 {

struct Request {
  const char* method = "GET";  // GET, HEAD, PUT, POST, DELETE
  std::string url;
  std::vector<std::string> headers;  // "Name: value"
  // Body (PUT, POST): `body`, or body_size bytes of body_fd from body_fd_offset (pread; never buffered).
  std::span<const std::byte> body;
  int body_fd = -1;
  uint64_t body_fd_offset = 0;
  uint64_t body_size = 0;
  // Response body of a 2xx answer: into Response::body (at most max_body_bytes, else body_too_large),
  // or written to sink_fd at sink_fd_offset onwards (pwrite; a retry writes the same range again).
  int sink_fd = -1;
  uint64_t sink_fd_offset = 0;
  uint64_t max_body_bytes = 1ull << 20;
  // Bytes moved by this request, as deltas (negative when a retry starts over); may be empty.
  std::function<void(int64_t)> on_bytes;
};

struct Response {
  long http_status = 0;       // 0 when no answer arrived
  int curl_code = 0;          // CURLcode of the last attempt
  std::string curl_error;
  std::string body;           // a small 2xx body, or the first 64 KiB of an error document
  uint64_t content_length = 0;
  bool has_content_length = false;
  std::string etag;           // the ETag header, quotes kept
  uint64_t sink_bytes = 0;    // 2xx body bytes written to sink_fd
  bool body_too_large = false;
  int sink_errno = 0;         // a failed write to sink_fd
  int attempts = 0;
  double seconds = 0;         // over all attempts

  bool transport_ok() const { return curl_code == 0 && sink_errno == 0 && !body_too_large; }
  bool ok_2xx() const { return transport_ok() && http_status / 100 == 2; }
};

class Client {
 public:
  explicit Client(S3Config config);

  const S3Config& config() const { return c_; }
  // URL of the bucket and of one key under the store's prefix (keys need no escaping: check_store_key).
  std::string bucket_url() const;
  std::string full_key(std::string_view key) const;
  std::string object_url(std::string_view key) const;

  // Sends the request; retries connection errors, 5xx, 429 and 408 with exponential backoff (50 ms
  // doubling to 5 s) and full jitter until config().retry_seconds have passed since the first attempt
  // (the last retry goes out at that deadline, not one backoff before it).
  Response perform(const Request& request) const;

  // Ok for a 2xx answer. Otherwise, naming `what` (e.g. "s3://b/p: put versions/..."):
  // E_DENIED (401, 403; says where the credentials came from), E_NOT_FOUND (404), E_UNAVAILABLE (no
  // answer, or 5xx/429/408, until the retry deadline), E_IO (a local write failed, any other answer).
  Status check(const Response& r, const std::string& what) const;

 private:
  Response perform_once(const Request& request, int64_t& reported_bytes) const;
  S3Config c_;
};

// The text of every <tag>...</tag> in an XML document, in order, with the five predefined entities decoded.
std::vector<std::string> xml_values(std::string_view xml, std::string_view tag);
// RFC 3986: unreserved characters pass, everything else is %XX (for query values).
std::string url_encode(std::string_view s);

}  // namespace dws::s3
