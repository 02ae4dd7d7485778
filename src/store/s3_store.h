// The S3 store driver (internal): open_store() hands "s3://bucket/prefix" URIs here.
#pragma once

#include <memory>
#include <string>

#include "dws/store.h"

namespace dws {

struct S3Config {
  std::string bucket, prefix;        // from the URI; prefix may be empty
  std::string endpoint;              // AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL; default https://s3.<region>.amazonaws.com
  std::string region;                // AWS_REGION / AWS_DEFAULT_REGION; default us-east-1
  std::string access_key, secret_key, session_token;  // AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN
  bool path_style = false;           // DWS_S3_ADDRESSING=path|virtual; default path with an endpoint, else virtual
  bool verify_tls = true;            // DWS_S3_INSECURE=1 turns certificate checks off
  double retry_seconds = 60;         // DWS_S3_RETRY_SECONDS: how long one request keeps retrying

  // Parses the URI and reads the environment. No network access.
  static Result<S3Config> from_uri(const std::string& uri);
};

Result<std::unique_ptr<Store>> open_s3_store(const S3Config& config);

}  // namespace dws
