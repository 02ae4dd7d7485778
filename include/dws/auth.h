// dws/auth.h — authenticated versions: a secret shared by the trainer and its receivers (docs/store.md
// §Authenticated versions).
//
// With a key, a publisher lists every file of a version with its SHA-256 and signs the version's
// manifest with HMAC-SHA256 (OpenSSL's libcrypto); a receiver holding the key refuses, with E_AUTH, any
// manifest that is unsigned, signed by another key or altered, and any file whose SHA-256 differs from
// the signed one. Whoever can write to the store but lacks the secret can then delete versions, but
// cannot make a receiver apply bytes the trainer did not publish.
//
// The secret is never logged, printed or put in an error message: only its id (a fingerprint derived
// from it with HMAC, safe to show) appears anywhere.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dws/status.h"

namespace dws {

class AuthKey {
 public:
  static constexpr size_t kMinSecretBytes = 16;
  static constexpr size_t kMaxSecretBytes = 4096;

  // E_INVALID_ARGUMENT when the secret is shorter than kMinSecretBytes or longer than kMaxSecretBytes.
  static Result<AuthKey> from_secret(std::span<const std::byte> secret);
  // The secret is the file's bytes, without one trailing "\n" or "\r\n" (as `echo` or an editor leaves it).
  // E_NOT_FOUND / E_IO when the file cannot be read; the message names the path, never the contents.
  static Result<AuthKey> from_file(const std::string& path);

  AuthKey(const AuthKey& other) = default;
  AuthKey& operator=(const AuthKey& other) = default;
  AuthKey(AuthKey&& other) noexcept = default;
  AuthKey& operator=(AuthKey&& other) noexcept = default;
  ~AuthKey();  // wipes the secret

  // 16 hex digits identifying the key (HMAC-SHA256 of a fixed label, truncated): safe to log; tells a
  // receiver with another key which key signed a version.
  const std::string& id() const { return id_; }
  // HMAC-SHA256 of `message`, 64 lower-case hex digits.
  std::string sign(std::string_view message) const;
  // Whether `mac_hex` is sign(message); compared in constant time.
  bool verify(std::string_view message, std::string_view mac_hex) const;

 private:
  AuthKey() = default;
  std::vector<std::byte> secret_;
  std::string id_;
};

}  // namespace dws
