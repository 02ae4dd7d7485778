// element_key.h — native's order-preserving integer key of an element's bits (internal; shared by the CPU
// codec and the CUDA kernels, docs/patch-format.md §4.1).
//
// Floats map to keys whose unsigned order is the numeric order (ULP distance = key distance); integers
// are their own key. W is the element width in bytes (1, 2, 4, 8); bits and keys hold W bytes.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define DWS_HOST_DEVICE __host__ __device__
#else
#define DWS_HOST_DEVICE
#endif

namespace dws::codec::native {

// All bits of a W-byte element, and its top (sign) bit.
template <size_t W>
inline constexpr uint64_t kWidthMask = W == 8 ? ~0ull : (1ull << (8 * W)) - 1;
template <size_t W>
inline constexpr uint64_t kSignBit = 1ull << (8 * W - 1);

template <size_t W, bool kFloat>
DWS_HOST_DEVICE inline uint64_t key_of(uint64_t bits) {
  if constexpr (!kFloat) {
    return bits;
  } else {
    return (bits & kSignBit<W>) ? (~bits & kWidthMask<W>) : (bits | kSignBit<W>);
  }
}

template <size_t W, bool kFloat>
DWS_HOST_DEVICE inline uint64_t bits_of(uint64_t key) {
  if constexpr (!kFloat) {
    return key;
  } else {
    return (key & kSignBit<W>) ? (key & ~kSignBit<W>) : (~key & kWidthMask<W>);
  }
}

// The new bits after adding a zigzag-coded key distance (ChangeOp::kAddKey), wrapping in the width.
template <size_t W, bool kFloat>
DWS_HOST_DEVICE inline uint64_t add_key_distance(uint64_t bits, uint64_t zigzag_distance) {
  const uint64_t distance = (zigzag_distance >> 1) ^ (0 - (zigzag_distance & 1));
  return bits_of<W, kFloat>((key_of<W, kFloat>(bits) + distance) & kWidthMask<W>);
}

}  // namespace dws::codec::native
