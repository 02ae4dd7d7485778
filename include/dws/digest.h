// dws/digest.h — content digests: XXH3-128 for byte strings (payloads, files, metadata) and the additive
// tensor digest for tensors and whole checkpoint states (docs/patch-format.md §5).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "dws/dtype.h"

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
// ---- tensor digest (patch format v2, docs/patch-format.md §5) ----
//
// A tensor's bytes are read as little-endian u64 words (the last one zero-padded). Its digest is, in two
// 64-bit lanes (high, low), the sum modulo 2^64 of a seed term and one mixed hash per word of (tensor
// seed, word index, word bits); the seed hashes the tensor's name, dtype and shape. Because it is
// a sum, changing elements updates it in O(changes) (TensorDigestDelta), disjoint word ranges can be
// hashed in parallel and added, and a state digest is the plain sum of its tensors' digests. For a fixed
// word index the word hash is a bijection of the word's bits in each lane, so a single changed word is
// always detected; other accidental mismatches survive with probability about 2^-128. It is not a MAC.
Digest128 digest_add(const Digest128& a, const Digest128& b);
Digest128 digest_sub(const Digest128& a, const Digest128& b);

struct TensorSeed {
  uint64_t index_key = 0, mix_key = 0;
  Digest128 term;  // the seed's own contribution, so that an empty tensor still counts
};
TensorSeed tensor_seed(std::string_view name, DType dtype, std::span<const uint64_t> shape);

// The hash of word `word_index` holding `word`.
Digest128 word_digest(const TensorSeed& seed, uint64_t word_index, uint64_t word);
// Sum of the word hashes of `bytes`, whose first byte starts word `first_word`; a partial last word is
// zero-padded. Without the seed term: tensor digest = seed.term + words_digest(seed, all bytes, 0).
Digest128 words_digest(const TensorSeed& seed, std::span<const std::byte> bytes, uint64_t first_word);
Digest128 tensor_digest(std::string_view name, DType dtype, std::span<const uint64_t> shape,
                        std::span<const std::byte> bytes);

// Accumulates the digest change of writing new values into a tensor whose current bytes are `before`:
// call set() for each changed element in strictly ascending position order (as every decoder yields
// them), then delta() once; digest(after) = digest(before) + delta(). `before` is only read and must not
// be written until delta() has returned. O(1) per change.
class TensorDigestDelta {
 public:
  TensorDigestDelta(const TensorSeed& seed, std::span<const std::byte> before, size_t element_size_bytes);
  void set(uint64_t position, const std::byte* value);
  Digest128 delta();

 private:
  void flush();
  const TensorSeed& seed_;
  std::span<const std::byte> before_;
  size_t width_;
  uint64_t word_index_ = UINT64_MAX;
  uint64_t old_word_ = 0, new_word_ = 0;
  Digest128 sum_;
};

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
