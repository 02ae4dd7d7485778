#include "dws/digest.h"

#include <xxhash.h>

#include <bit>
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

// ---- tensor digest ----

static_assert(std::endian::native == std::endian::little, "tensor digests read words little-endian");

namespace {

constexpr uint64_t kIndexMul = 0x9E3779B97F4A7C15ull;  // odd: multiplication is a bijection mod 2^64

// Both lanes of a word's hash come from one MurmurHash3 fmix64 chain on x ^ key: the low lane taps it
// after the first multiply (plus an xorshift), the high lane at the end. Every step is a bijection, so
// each lane is a bijection of x. Two multiplies per 8 bytes.
struct WordHash {
  uint64_t high, low;
};
inline WordHash mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  const uint64_t low = x ^ (x >> 29);
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return {x, low};
}
inline uint64_t fmix64(uint64_t x) { return mix(x).high; }

inline uint64_t load_word(const std::byte* p, size_t n) {
  uint64_t w = 0;
  std::memcpy(&w, p, n);
  return w;
}

}  // namespace

Digest128 digest_add(const Digest128& a, const Digest128& b) { return {a.high + b.high, a.low + b.low}; }
Digest128 digest_sub(const Digest128& a, const Digest128& b) { return {a.high - b.high, a.low - b.low}; }

TensorSeed tensor_seed(std::string_view name, DType dtype, std::span<const uint64_t> shape) {
  DigestStream s;
  s.update_string("dws-tensor-v2");
  s.update_string(name);
  s.update_string(dtype_name(dtype));
  s.update_u64(shape.size());
  for (uint64_t d : shape) s.update_u64(d);
  const Digest128 h = s.finish();
  TensorSeed seed;
  seed.index_key = h.low;
  seed.mix_key = h.high;
  seed.term = {fmix64(h.high + 1), fmix64(h.low + 2)};
  return seed;
}

Digest128 word_digest(const TensorSeed& seed, uint64_t word_index, uint64_t word) {
  // For a fixed index, x is a bijection of word, and each lane's finalizer is a bijection of x.
  const WordHash m = mix((((word_index + seed.index_key) * kIndexMul) ^ word) ^ seed.mix_key);
  return {m.high, m.low};
}

Digest128 words_digest(const TensorSeed& seed, std::span<const std::byte> bytes, uint64_t first_word) {
  const size_t full = bytes.size() / 8;
  const std::byte* p = bytes.data();
  // Four independent accumulators per lane keep the multipliers busy; (index + key) * kIndexMul advances
  // by kIndexMul per word.
  uint64_t h[4] = {0, 0, 0, 0}, l[4] = {0, 0, 0, 0};
  uint64_t index_term = (first_word + seed.index_key) * kIndexMul;
  size_t i = 0;
  for (; i + 4 <= full; i += 4) {
    for (size_t k = 0; k < 4; ++k) {
      const WordHash m = mix((index_term ^ load_word(p + 8 * (i + k), 8)) ^ seed.mix_key);
      index_term += kIndexMul;
      h[k] += m.high;
      l[k] += m.low;
    }
  }
  Digest128 sum{h[0] + h[1] + h[2] + h[3], l[0] + l[1] + l[2] + l[3]};
  for (; i < full; ++i) sum = digest_add(sum, word_digest(seed, first_word + i, load_word(p + 8 * i, 8)));
  if (const size_t tail = bytes.size() % 8; tail != 0) {
    sum = digest_add(sum, word_digest(seed, first_word + full, load_word(p + 8 * full, tail)));
  }
  return sum;
}

Digest128 tensor_digest(std::string_view name, DType dtype, std::span<const uint64_t> shape,
                        std::span<const std::byte> bytes) {
  const TensorSeed seed = tensor_seed(name, dtype, shape);
  return digest_add(seed.term, words_digest(seed, bytes, 0));
}

TensorDigestDelta::TensorDigestDelta(const TensorSeed& seed, std::span<const std::byte> before, size_t element_size_bytes)
    : seed_(seed), before_(before), width_(element_size_bytes) {}

void TensorDigestDelta::flush() {
  if (word_index_ == UINT64_MAX) return;
  sum_ = digest_add(sum_, digest_sub(word_digest(seed_, word_index_, new_word_), word_digest(seed_, word_index_, old_word_)));
  word_index_ = UINT64_MAX;
}

void TensorDigestDelta::set(uint64_t position, const std::byte* value) {
  const uint64_t byte_at = position * width_;
  const uint64_t word = byte_at / 8;
  if (word != word_index_) {
    flush();
    word_index_ = word;
    old_word_ = load_word(before_.data() + 8 * word, std::min<size_t>(8, before_.size() - 8 * word));
    new_word_ = old_word_;
  }
  uint64_t v = 0;
  std::memcpy(&v, value, width_);
  const unsigned shift = static_cast<unsigned>(byte_at % 8) * 8;
  const uint64_t mask = width_ == 8 ? ~0ull : ((1ull << (8 * width_)) - 1) << shift;
  new_word_ = (new_word_ & ~mask) | ((v << shift) & mask);
}

Digest128 TensorDigestDelta::delta() {
  flush();
  return sum_;
}

}  // namespace dws
