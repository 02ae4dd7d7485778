// native.h — the native encoding, v1 (internal; normative description in docs/patch-format.md §4).
//
// Positions: gaps between consecutive changed positions (first gap = first position, then
// position − previous − 1 ≥ 0), each split into a bit-length class (0..64, entropy-coded) and the bits
// below its leading one (stored raw): exp-Golomb with a learned, per-tensor class distribution. Values:
// the signed distance between the order-preserving integer keys of the new and the base value (ULP
// distance for floats, plain difference for integers), wrapping in the element width so it is exactly
// invertible for every bit pattern, zigzag-mapped and entropy-coded (255 = escape to a varint). Both
// symbol streams share one rANS stream. Encode and decode run in O(changes).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "codec/codecs.h"

namespace dws::codec::native {

Result<std::vector<std::byte>> encode(DType dtype, std::span<const std::byte> base, std::span<const std::byte> target,
                                      std::span<const uint64_t> positions);

// Decodes against `base` (the receiver's current tensor of `numel` elements); validates everything.
Status decode(DType dtype, uint64_t numel, uint64_t changes, std::span<const std::byte> payload,
              std::span<const std::byte> base, const ChangeSink& sink);

// The order-preserving key of an element's bits (exposed for tests).
uint64_t to_key(DType dtype, uint64_t bits);
uint64_t from_key(DType dtype, uint64_t key);

}  // namespace dws::codec::native
