// dws/encoding.h — how a patch stores one tensor's changes (docs/patch-format.md §Encodings).
#pragma once

#include <optional>
#include <string_view>

namespace dws {

enum class Encoding : uint8_t {
  kIndices,   // int32/int64 positions + raw values (torch index_copy_ form; TRL, slime "indices")
  kGaps,      // uint16/uint32/uint64 gaps between positions + raw values (slime "deltas")
  kGapsZstd,  // the gaps form through zstd (slime "deltas_zstd")
  kXorZstd,   // XOR of the whole tensor with its base, through zstd; needs the exact base
  kFull,      // the whole new tensor (added or re-shaped tensors, or any tensor on request)
  kNative,    // entropy-coded gaps + ULP distances to the base value (rANS); needs the exact base
  kAuto,      // a choice, not a stored encoding: per tensor the smallest of native, xor_zstd and full
};

std::string_view encoding_name(Encoding encoding);
std::optional<Encoding> encoding_from_name(std::string_view name);
// Names a stored tensor encoding (everything but kAuto).
inline bool is_tensor_encoding(Encoding encoding) { return encoding != Encoding::kAuto; }

// Encodings that read base values to decode (all others overwrite and need only the base's shape).
bool encoding_needs_base_values(Encoding encoding);

}  // namespace dws
