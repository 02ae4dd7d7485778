// native.h — the native encoding (internal; normative description in docs/patch-format.md §4.1).
//
// Values, in every layout: the signed distance between the order-preserving integer keys of the new
// and the base value (ULP distance for floats, plain difference for integers), wrapping in the element
// width so it is exactly invertible for every bit pattern, zigzag-mapped and rANS-coded (255 = escape
// to a varint).
//
// Positions, one of three layouts chosen per tensor by size:
//   gaps   — exp-Golomb gaps: a rANS-coded bit length plus raw low bits. O(changes) both ways.
//   bitmap — one bit per element, its bytes rANS-coded; tried from 1/32 density, preferred within 3% of
//            the gaps size from 1/8 density (fewer symbols to decode). O(elements / 8).
//   class  — per class of the base value (its exponent field), Rice-coded gaps between the changed
//            members of that class. ~25% smaller on AdamW steps, but encode and decode scan the base
//            tensor (O(elements)), so it is opt-in (Options::class_positions); float dtypes only.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "codec/codecs.h"

namespace dws::codec::native {

enum class Layout : uint8_t { kGaps = 1, kClass = 2, kBitmap = 3 };  // byte 0 of a payload

// From kBitmapPreferredDensity on, the bitmap layout (fewer symbols to decode than gaps there) is chosen
// when it is at most kBitmapSizeMargin times the size of the gaps layout.
inline constexpr double kBitmapPreferredDensity = 1.0 / 8;
inline constexpr double kBitmapSizeMargin = 1.03;

struct Options {
  bool class_positions = false;  // also try the class layout (encode and decode then scan the base)
  std::optional<Layout> only;    // encode with exactly this layout (tests); kClass needs a float dtype
};

// Encodes the changes at `positions` (ascending) of target against base; the smallest allowed layout.
Result<std::vector<std::byte>> encode(DType dtype, std::span<const std::byte> base, std::span<const std::byte> target,
                                      std::span<const uint64_t> positions, const Options& options = {});

// The same from the changed elements alone (a change tracker's record; no base tensor at hand):
// base_values and target_values hold the element at each position, positions.size() elements each. The
// class layout, which needs the whole base, is not tried; the payload decodes like any other.
Result<std::vector<std::byte>> encode_changes(DType dtype, uint64_t numel, std::span<const uint64_t> positions,
                                              std::span<const std::byte> base_values, std::span<const std::byte> target_values);

// ---- encoding in two halves: per change (parallel, what a GPU computes where the changes are), then per
// tensor (models, rANS, the layout choice) ----

// Layout 1's per-change symbols of a tensor's changes, in position order.
struct ChangeSymbols {
  std::vector<uint8_t> gap_lengths;  // per change: the bit length L (0..64) of its gap (model G's symbol)
  std::vector<uint8_t> values;       // per change: its zigzag key distance z if z < 255, else 255 (model V's symbol)
  std::vector<std::byte> mantissas;  // layout 1's mantissa section: the L - 1 low bits of every gap with L >= 2
  std::vector<uint64_t> escapes;     // z - 255 of every change whose symbol is 255, in order
};

// The first half on the host (the reference of gpu::NativeEncoder); inputs as encode_changes takes them.
Result<ChangeSymbols> symbolize_changes(DType dtype, uint64_t numel, std::span<const uint64_t> positions,
                                        std::span<const std::byte> base_values, std::span<const std::byte> target_values);

// The second half: the payload encode_changes writes for the same changes, byte for byte. `symbols` is
// checked as hostile before anything is coded (sizes agree, L <= 64, z != 0 and fits the dtype, mantissa
// bits exactly used, positions ascending and < numel): E_INVALID_ARGUMENT saying what disagrees.
Result<std::vector<std::byte>> encode_symbols(DType dtype, uint64_t numel, const ChangeSymbols& symbols);

// Decodes against `base` (the receiver's current tensor of `numel` elements); validates everything.
Status decode(DType dtype, uint64_t numel, uint64_t changes, std::span<const std::byte> payload,
              std::span<const std::byte> base, const ChangeSink& sink);

// The same without the base: the sink receives each change's zigzag key distance as a uint64_t
// (ChangeOp::kAddKey) instead of its new value. The class layout needs the base: E_UNSUPPORTED.
Status decode_operands(DType dtype, uint64_t numel, uint64_t changes, std::span<const std::byte> payload,
                       const ChangeSink& sink);

// Whether the class layout exists for this dtype (float dtypes).
bool has_class_layout(DType dtype);

// The order-preserving key of an element's bits (exposed for tests).
uint64_t to_key(DType dtype, uint64_t bits);
uint64_t from_key(DType dtype, uint64_t key);
// The bits after adding a zigzag key distance (codec::ChangeOp::kAddKey), as decoders and kernels do.
uint64_t add_key_distance(DType dtype, uint64_t bits, uint64_t zigzag_distance);

}  // namespace dws::codec::native
