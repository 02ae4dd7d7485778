// dws/digest.h — content digests (XXH3-128) used for tensors, payloads and whole checkpoints.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace dws {

struct Digest128 {
  uint64_t high = 0;
  uint64_t low = 0;
  friend bool operator==(const Digest128&, const Digest128&) = default;
};

// XXH3-128 of the bytes.
Digest128 digest_bytes(std::span<const std::byte> bytes);
// 32 lower-case hex characters, high half first (XXH3's canonical order).
std::string digest_hex(const Digest128& digest);
std::optional<Digest128> digest_from_hex(std::string_view hex);

// Streaming XXH3-128 over several pieces; equivalent to digest_bytes of their concatenation.
class DigestStream {
 public:
  DigestStream();
  ~DigestStream();
  DigestStream(const DigestStream&) = delete;
  DigestStream& operator=(const DigestStream&) = delete;
  void update(std::span<const std::byte> bytes);
  void update_u64(uint64_t value);           // 8 bytes, little-endian
  void update_string(std::string_view text);  // length (u64) then bytes
  Digest128 finish() const;

 private:
  void* state_;  // XXH3_state_t, kept opaque to keep xxhash.h out of public headers
};

}  // namespace dws
