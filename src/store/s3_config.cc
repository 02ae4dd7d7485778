// S3Config::from_uri: the URI, the environment and the AWS shared config/credentials files, in the
// precedence the AWS CLI uses (docs/store.md).
#include "store/s3_config.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>

#include "dws/store.h"

namespace dws {

namespace {

std::string env_or(const char* name, const std::string& fallback = "") {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : fallback;
}

std::string trim(std::string s) {
  const auto not_space = [](unsigned char c) { return !std::isspace(c); };
  s.erase(s.begin(), std::find_if(s.begin(), s.end(), not_space));
  s.erase(std::find_if(s.rbegin(), s.rend(), not_space).base(), s.end());
  return s;
}

using IniSection = std::map<std::string, std::string>;

// The sections of an AWS shared file: "[name]" headers, "key = value" lines, '#' and ';' comments.
// Indented lines (nested settings such as "s3 =\n  addressing_style = path") are skipped. nullopt when
// the file cannot be opened.
std::optional<std::map<std::string, IniSection>> read_ini(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::map<std::string, IniSection> out;
  std::string line, section;
  bool have_section = false;
  while (std::getline(in, line)) {
    if (!line.empty() && (line[0] == ' ' || line[0] == '\t')) continue;
    line = trim(line);
    if (line.empty() || line[0] == '#' || line[0] == ';') continue;
    if (line.front() == '[' && line.back() == ']') {
      section = trim(line.substr(1, line.size() - 2));
      have_section = true;
      out[section];
      continue;
    }
    const size_t eq = line.find('=');
    if (!have_section || eq == std::string::npos) continue;
    out[section][trim(line.substr(0, eq))] = trim(line.substr(eq + 1));
  }
  return out;
}

std::string home_file(const char* relative) {
  const std::string home = env_or("HOME");
  return home.empty() ? "" : home + "/" + relative;
}

Result<uint64_t> positive_env(const char* name, uint64_t fallback, uint64_t lo, uint64_t hi) {
  const std::string s = env_or(name);
  if (s.empty()) return fallback;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  if (*end != '\0' || v < lo || v > hi) {
    return make_error(ErrorCode::kInvalidArgument, std::string(name) + "='" + s + "': expected an integer in [" + std::to_string(lo) +
                                                       ", " + std::to_string(hi) + "]");
  }
  return static_cast<uint64_t>(v);
}

}  // namespace

Result<S3Config> S3Config::from_uri(const std::string& uri, const std::string& endpoint_override) {
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

  // The profile, from the shared files. An explicitly named profile must exist in one of them.
  const std::string profile = env_or("AWS_PROFILE", "default");
  const std::string credentials_file = env_or("AWS_SHARED_CREDENTIALS_FILE", home_file(".aws/credentials"));
  const std::string config_file = env_or("AWS_CONFIG_FILE", home_file(".aws/config"));
  IniSection from_credentials, from_config;
  bool profile_found = false;
  if (auto ini = credentials_file.empty() ? std::nullopt : read_ini(credentials_file)) {
    if (auto it = ini->find(profile); it != ini->end()) from_credentials = it->second, profile_found = true;
  }
  if (auto ini = config_file.empty() ? std::nullopt : read_ini(config_file)) {
    auto it = ini->find(profile == "default" ? std::string("default") : "profile " + profile);
    if (it != ini->end()) from_config = it->second, profile_found = true;
  }
  if (!profile_found && !env_or("AWS_PROFILE").empty()) {
    return make_error(ErrorCode::kInvalidArgument, "AWS_PROFILE='" + profile + "': no such profile in " +
                                                       (credentials_file.empty() ? "(no credentials file)" : credentials_file) + " or " +
                                                       (config_file.empty() ? "(no config file)" : config_file));
  }
  const auto profile_value = [&](const char* key) {
    if (auto it = from_credentials.find(key); it != from_credentials.end() && !it->second.empty()) return it->second;
    if (auto it = from_config.find(key); it != from_config.end() && !it->second.empty()) return it->second;
    return std::string();
  };

  c.endpoint = !endpoint_override.empty() ? endpoint_override
                                          : env_or("AWS_ENDPOINT_URL_S3", env_or("AWS_ENDPOINT_URL", profile_value("endpoint_url")));
  c.region = env_or("AWS_REGION", env_or("AWS_DEFAULT_REGION", profile_value("region")));
  if (c.region.empty()) c.region = "us-east-1";

  const std::string env_key = env_or("AWS_ACCESS_KEY_ID"), env_secret = env_or("AWS_SECRET_ACCESS_KEY");
  if (env_key.empty() != env_secret.empty()) {
    return make_error(ErrorCode::kInvalidArgument, "S3 credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together");
  }
  if (!env_key.empty()) {
    c.access_key = env_key;
    c.secret_key = env_secret;
    c.session_token = env_or("AWS_SESSION_TOKEN");
    c.credentials_source = "environment";
  } else if (const std::string k = profile_value("aws_access_key_id"); !k.empty()) {
    c.access_key = k;
    c.secret_key = profile_value("aws_secret_access_key");
    c.session_token = profile_value("aws_session_token");
    const bool in_credentials = from_credentials.count("aws_access_key_id") > 0;
    c.credentials_source = (in_credentials ? credentials_file : config_file) + " [" + profile + "]";
    if (c.secret_key.empty()) {
      return make_error(ErrorCode::kInvalidArgument, "S3 credentials: " + c.credentials_source + " has aws_access_key_id but no aws_secret_access_key");
    }
  } else {
    c.credentials_source = "none";
  }

  const std::string addressing = env_or("DWS_S3_ADDRESSING", c.endpoint.empty() ? "virtual" : "path");
  if (addressing != "path" && addressing != "virtual") {
    return make_error(ErrorCode::kInvalidArgument, "DWS_S3_ADDRESSING='" + addressing + "': expected 'path' or 'virtual'");
  }
  c.path_style = addressing == "path";
  c.verify_tls = env_or("DWS_S3_INSECURE") != "1";
  if (const std::string s = env_or("DWS_S3_RETRY_SECONDS"); !s.empty()) {
    char* end = nullptr;
    c.retry_seconds = std::strtod(s.c_str(), &end);
    if (*end != '\0' || !(c.retry_seconds >= 0) || c.retry_seconds > 86400) {
      return make_error(ErrorCode::kInvalidArgument, "DWS_S3_RETRY_SECONDS='" + s + "': expected seconds in [0, 86400]");
    }
  }
  DWS_ASSIGN_OR_RETURN(const uint64_t part_mb, positive_env("DWS_S3_PART_MB", 16, 5, 5120));
  c.part_size_bytes = part_mb << 20;
  DWS_ASSIGN_OR_RETURN(const uint64_t concurrency, positive_env("DWS_S3_CONCURRENCY", 8, 1, 64));
  c.concurrency = static_cast<unsigned>(concurrency);

  if (c.endpoint.empty()) c.endpoint = "https://s3." + c.region + ".amazonaws.com";
  while (!c.endpoint.empty() && c.endpoint.back() == '/') c.endpoint.pop_back();
  if (c.endpoint.rfind("http://", 0) != 0 && c.endpoint.rfind("https://", 0) != 0) {
    return make_error(ErrorCode::kInvalidArgument, "S3 endpoint '" + c.endpoint + "' must start with http:// or https://");
  }
  return c;
}

}  // namespace dws
