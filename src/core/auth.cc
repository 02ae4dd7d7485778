// AuthKey (dws/auth.h) and SHA-256 (core/sha256.h) over OpenSSL's libcrypto.
#include "dws/auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <cstdio>
#include <cstring>

#include "core/file_io.h"
#include "core/sha256.h"

namespace dws {

namespace {

constexpr char kHex[] = "0123456789abcdef";

std::string to_hex(const unsigned char* p, size_t n) {
  std::string out(2 * n, '0');
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = kHex[p[i] >> 4];
    out[2 * i + 1] = kHex[p[i] & 15];
  }
  return out;
}

// HMAC-SHA256 of message under secret into out[32].
void hmac_sha256(std::span<const std::byte> secret, std::string_view message, unsigned char out[32]) {
  unsigned int len = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()), reinterpret_cast<const unsigned char*>(message.data()),
       message.size(), out, &len);
}

}  // namespace

struct Sha256Stream::Ctx {
  EVP_MD_CTX* md = nullptr;
};

Sha256Stream::Sha256Stream() : ctx_(std::make_unique<Ctx>()) {
  ctx_->md = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx_->md, EVP_sha256(), nullptr);
}

Sha256Stream::~Sha256Stream() { EVP_MD_CTX_free(ctx_->md); }

void Sha256Stream::update(std::span<const std::byte> bytes) { EVP_DigestUpdate(ctx_->md, bytes.data(), bytes.size()); }

std::string Sha256Stream::finish_hex() {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx_->md, out, &len);
  return to_hex(out, len);
}

std::string sha256_hex(std::span<const std::byte> bytes) {
  Sha256Stream s;
  s.update(bytes);
  return s.finish_hex();
}

Result<AuthKey> AuthKey::from_secret(std::span<const std::byte> secret) {
  if (secret.size() < kMinSecretBytes || secret.size() > kMaxSecretBytes) {
    return make_error(ErrorCode::kInvalidArgument, "auth: the secret is " + std::to_string(secret.size()) + " bytes; it must be " +
                                                       std::to_string(kMinSecretBytes) + " to " + std::to_string(kMaxSecretBytes) +
                                                       " bytes (e.g. `openssl rand -hex 32 > secret`)");
  }
  AuthKey key;
  key.secret_.assign(secret.begin(), secret.end());
  unsigned char id[32];
  hmac_sha256(key.secret_, "dws key id v1", id);
  key.id_ = to_hex(id, 8);
  OPENSSL_cleanse(id, sizeof id);
  return key;
}

Result<AuthKey> AuthKey::from_file(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) {
    const int err = errno;
    return make_error(err == ENOENT ? ErrorCode::kNotFound : ErrorCode::kIo, "auth: cannot read the secret file " + path + ": " + io::errno_text(err));
  }
  std::vector<std::byte> bytes(kMaxSecretBytes + 3);
  const size_t n = std::fread(bytes.data(), 1, bytes.size(), f);
  const bool read_error = std::ferror(f) != 0;
  std::fclose(f);
  auto wipe = [&] { OPENSSL_cleanse(bytes.data(), bytes.size()); };
  if (read_error) {
    wipe();
    return make_error(ErrorCode::kIo, "auth: reading the secret file " + path + " failed");
  }
  size_t len = n;
  if (len > 0 && bytes[len - 1] == std::byte{'\n'}) {
    --len;
    if (len > 0 && bytes[len - 1] == std::byte{'\r'}) --len;
  }
  auto key = from_secret(std::span(bytes).first(len));
  wipe();
  if (!key.ok()) return key.status().with_context("secret file " + path);
  return key;
}

AuthKey::~AuthKey() {
  if (!secret_.empty()) OPENSSL_cleanse(secret_.data(), secret_.size());
}

std::string AuthKey::sign(std::string_view message) const {
  unsigned char mac[32];
  hmac_sha256(secret_, message, mac);
  return to_hex(mac, sizeof mac);
}

bool AuthKey::verify(std::string_view message, std::string_view mac_hex) const {
  const std::string want = sign(message);
  if (mac_hex.size() != want.size()) return false;
  return CRYPTO_memcmp(want.data(), mac_hex.data(), want.size()) == 0;
}

}  // namespace dws
