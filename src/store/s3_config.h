// S3 store configuration (internal): where the endpoint, region, credentials and transfer settings of an
// "s3://bucket/prefix" store come from. Documented in docs/store.md ("S3-compatible object stores").
#pragma once

#include <cstdint>
#include <string>

#include "dws/status.h"

namespace dws {

struct S3Config {
  std::string bucket, prefix;  // from the URI; prefix may be empty
  // First set wins: the endpoint argument (CLI --endpoint), AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the
  // profile's endpoint_url; default https://s3.<region>.amazonaws.com.
  std::string endpoint;
  // AWS_REGION, AWS_DEFAULT_REGION, the profile's region; default us-east-1.
  std::string region;
  // AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN), else the profile (AWS_PROFILE, default
  // "default") in the credentials file (AWS_SHARED_CREDENTIALS_FILE, ~/.aws/credentials), else in the config
  // file (AWS_CONFIG_FILE, ~/.aws/config); none: anonymous requests.
  std::string access_key, secret_key, session_token;
  std::string credentials_source;  // "environment", "FILE [profile]", or "none" (for messages; never the secret)
  bool path_style = false;         // DWS_S3_ADDRESSING=path|virtual; default path with an endpoint, else virtual
  bool verify_tls = true;          // DWS_S3_INSECURE=1 turns certificate checks off
  double retry_seconds = 60;       // DWS_S3_RETRY_SECONDS: how long one request keeps retrying
  // Objects larger than one part go up as a multipart upload and come down as ranged GETs, `concurrency`
  // parts at a time (DWS_S3_PART_MB, default 16, at least 5; DWS_S3_CONCURRENCY, default 8, 1..64).
  uint64_t part_size_bytes = 16ull << 20;
  unsigned concurrency = 8;

  // Parses the URI and reads the environment and the AWS shared files. No network access.
  // `endpoint_override` (non-empty) takes precedence over every other endpoint source.
  static Result<S3Config> from_uri(const std::string& uri, const std::string& endpoint_override = "");
};

}  // namespace dws
