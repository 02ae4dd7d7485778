#include "dws/digest.h"

#include <xxhash.h>

#include <cstring>

namespace dws {

Digest128 digest_bytes(std::span<const std::byte> bytes) {
  XXH128_hash_t h = XXH3_128bits(bytes.data(), bytes.size());
  return Digest128{h.high64, h.low64};
}

std::string digest_hex(const Digest128& digest) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(32, '0');
  for (int i = 0; i < 16; ++i) {
    out[static_cast<size_t>(15 - i)] = kHex[(digest.high >> (4 * i)) & 0xF];
    out[static_cast<size_t>(31 - i)] = kHex[(digest.low >> (4 * i)) & 0xF];
  }
  return out;
}

std::optional<Digest128> digest_from_hex(std::string_view hex) {
  if (hex.size() != 32) return std::nullopt;
  Digest128 d;
  for (size_t i = 0; i < 32; ++i) {
    char c = hex[i];
    uint64_t v;
    if (c >= '0' && c <= '9') v = static_cast<uint64_t>(c - '0');
    else if (c >= 'a' && c <= 'f') v = static_cast<uint64_t>(c - 'a' + 10);
    else return std::nullopt;
    uint64_t& half = i < 16 ? d.high : d.low;
    half = (half << 4) | v;
  }
  return d;
}

DigestStream::DigestStream() : state_(XXH3_createState()) { XXH3_128bits_reset(static_cast<XXH3_state_t*>(state_)); }
DigestStream::~DigestStream() { XXH3_freeState(static_cast<XXH3_state_t*>(state_)); }

void DigestStream::update(std::span<const std::byte> bytes) {
  XXH3_128bits_update(static_cast<XXH3_state_t*>(state_), bytes.data(), bytes.size());
}

void DigestStream::update_u64(uint64_t value) {
  unsigned char le[8];
  for (int i = 0; i < 8; ++i) le[i] = static_cast<unsigned char>(value >> (8 * i));
  XXH3_128bits_update(static_cast<XXH3_state_t*>(state_), le, 8);
}

void DigestStream::update_string(std::string_view text) {
  update_u64(text.size());
  XXH3_128bits_update(static_cast<XXH3_state_t*>(state_), text.data(), text.size());
}

Digest128 DigestStream::finish() const {
  XXH128_hash_t h = XXH3_128bits_digest(static_cast<XXH3_state_t*>(state_));
  return Digest128{h.high64, h.low64};
}

}  // namespace dws
