// native_symbols.h — the per-change symbols of the native encoding (internal; shared by the CPU codec and the
// CUDA kernels, docs/patch-format.md §4.1): a change's value symbol comes from its base and target bits alone,
// and its gap symbol from its position and the previous one, so both can be computed for every change at once.
#pragma once

#include <cstdint>

#include "codec/element_key.h"

namespace dws::codec::native {

inline constexpr uint32_t kEscapeSymbol = 255;  // value symbol of a zigzag distance >= 255 (the rest escaped)

// The zigzag-mapped signed key distance from base to target (W-byte elements): 0 only when the bits are equal.
template <size_t W, bool kFloat>
DWS_HOST_DEVICE inline uint64_t zigzag_key_distance(uint64_t base_bits, uint64_t target_bits) {
  const uint64_t d = (key_of<W, kFloat>(target_bits) - key_of<W, kFloat>(base_bits)) & kWidthMask<W>;
  // Sign-extend the W-byte distance, then zigzag: 2d for d >= 0, -2d - 1 otherwise.
  constexpr unsigned kShift = static_cast<unsigned>(64 - 8 * W);
  const int64_t s = static_cast<int64_t>(d << kShift) >> kShift;
  return (static_cast<uint64_t>(s) << 1) ^ static_cast<uint64_t>(s >> 63);
}

// Bit length of a gap (layout 1's model G symbol, 0..64); the gap's mantissa is its L - 1 bits below the
// leading one when L >= 2.
DWS_HOST_DEVICE inline uint32_t gap_bit_length(uint64_t gap) {
#if defined(__CUDA_ARCH__)
  return 64u - static_cast<uint32_t>(__clzll(static_cast<long long>(gap)));
#else
  return gap == 0 ? 0u : 64u - static_cast<uint32_t>(__builtin_clzll(gap));
#endif
}
DWS_HOST_DEVICE inline uint32_t gap_mantissa_bits(uint32_t length) { return length >= 2 ? length - 1 : 0; }

}  // namespace dws::codec::native
