// codecs.h — encoders and validating decoders for every encoding (internal).
//
// Contract shared by all decoders: payload bytes are hostile. A decoder checks every size against the
// declared change count and tensor size before allocating, and every position for range and strict
// ascent; on the first violation it returns an error, having passed only validated changes to the sink,
// and never more changes than the declared count (found by fuzz_decode: xor_zstd checked it only at the end).
// Callers that need all-or-nothing behaviour (apply) validate by decoding fully before writing.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "dws/dtype.h"
#include "dws/encoding.h"
#include "dws/status.h"

namespace dws::codec {

// One tensor stored in the patch file for one encoded tensor; role is its suffix ("idx", "val", ...).
struct PayloadTensor {
  std::string role;
  DType dtype = DType::kU8;
  std::vector<uint64_t> shape;
  std::vector<std::byte> bytes;
};

struct EncodedTensor {
  Encoding encoding = Encoding::kFull;
  uint64_t changes = 0;
  DType index_dtype = DType::kU8;  // positions' dtype for indices/gaps/gaps_zstd; unused otherwise
  std::vector<PayloadTensor> payloads;
};

struct EncodeInput {
  DType dtype;
  std::span<const std::byte> base;    // whole tensor; may be empty for kFull
  std::span<const std::byte> target;  // whole tensor
  std::span<const uint64_t> positions;
};

// Thresholds of kAuto: the dense forms are tried only from these densities on.
inline constexpr double kAutoDenseMinDensity = 0.01;  // xor_zstd
inline constexpr double kAutoFullMinDensity = 0.25;   // full

struct EncodeOptions {
  int zstd_level = 1;            // gaps_zstd, xor_zstd
  bool class_positions = false;  // native: also try the class layout (O(elements) encode and decode)
};

// Encodes one tensor. For kFull, base/positions are ignored and `shape` is the payload's shape. kAuto
// encodes with native and, at the densities above, with xor_zstd and full, and keeps the smallest.
Result<EncodedTensor> encode_tensor(Encoding encoding, const EncodeInput& input, std::span<const uint64_t> shape,
                                    const EncodeOptions& options);

struct PayloadView {
  std::string_view role;
  DType dtype;
  std::span<const uint64_t> shape;
  std::span<const std::byte> bytes;
};

struct DecodeParams {
  Encoding encoding;
  DType dtype;          // the tensor's dtype
  uint64_t numel;       // the tensor's element count
  uint64_t changes;     // declared change count
  DType index_dtype;    // declared positions' dtype
};

// Receives validated changes in ascending position order, in batches; values are absolute new values,
// positions.size() elements of dtype_size_bytes(dtype) each.
using ChangeSink = std::function<Status(std::span<const uint64_t> positions, std::span<const std::byte> values)>;

// Decodes a modified tensor (not kFull). `base` is the receiver's current tensor (read by kXorZstd and
// kNative). `base` may be the very buffer the sink writes into: every decoder reads a position's base
// value before the sink receives that position, and positions are unique, so no value is read after it
// was overwritten.
Status decode_changes(const DecodeParams& params, std::span<const PayloadView> payloads,
                      std::span<const std::byte> base, const ChangeSink& sink);

// How a decoded operand turns a tensor's current element into its new value. Receivers that do not hold
// the base on the host (GPU tensors) decode operands and apply them where the tensor lives.
enum class ChangeOp : uint8_t {
  kSet,     // operand: the new value (element width)
  kXor,     // operand: new = current XOR operand (element width)
  kAddKey,  // operand: uint64 zigzag distance; new = bits(key(current) + unzigzag(operand)) in the element's
            // width, key() being native's order-preserving integer key for the dtype (docs/patch-format.md §4.1)
};
ChangeOp change_op(Encoding encoding);  // kSet for indices/gaps/gaps_zstd, kXor for xor_zstd, kAddKey for native
size_t operand_size_bytes(ChangeOp op, DType dtype);

// Decodes a modified tensor without its base: the sink receives positions and operands of change_op(encoding)
// (operand_size_bytes each) instead of new values. Same validation as decode_changes, except what needs the
// base: a native class-layout payload is E_UNSUPPORTED.
Status decode_operands(const DecodeParams& params, std::span<const PayloadView> payloads, const ChangeSink& sink);

// The CPU reference of applying operands: tensor is the whole tensor of dtype elements, positions in range.
void apply_operands(DType dtype, ChangeOp op, std::span<std::byte> tensor, std::span<const uint64_t> positions,
                    std::span<const std::byte> operands);

// Payload roles and dtypes an encoding must carry; used by the patch parser before decoding.
Status check_payload_shapes(const DecodeParams& params, std::span<const PayloadView> payloads);

}  // namespace dws::codec
