// sha256.h — streaming SHA-256 (OpenSSL libcrypto) for the files of authenticated versions (internal).
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>

namespace dws {

class Sha256Stream {
 public:
  Sha256Stream();
  ~Sha256Stream();
  Sha256Stream(const Sha256Stream&) = delete;
  Sha256Stream& operator=(const Sha256Stream&) = delete;

  void update(std::span<const std::byte> bytes);
  std::string finish_hex();  // 64 lower-case hex digits; the stream is then spent

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
};

std::string sha256_hex(std::span<const std::byte> bytes);

}  // namespace dws
