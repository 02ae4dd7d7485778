// fuzz_common.h — what the fuzz targets and their seed generator share: a small model cropped from the
// reference trajectory (real AdamW step statistics, fuzzer-sized), and the framing of fuzz_decode's input.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "codec/codecs.h"
#include "dws/checkpoint.h"
#include "dws/diff.h"
#include "dws/digest.h"
#include "dws/patch.h"

namespace dws::fuzz {

struct Tensor {
  std::string name;
  DType dtype = DType::kBF16;
  std::vector<uint64_t> shape;
  std::vector<std::byte> bytes;
};

// The first 12 tensors of a trajectory step, each cropped to its first 8 rows (2-D) or 512 elements
// (1-D): ~20 KiB of bf16 with the step's real change pattern. Empty when the file cannot be opened.
inline std::vector<Tensor> cropped_step(int step) {
  char path[512];
  std::snprintf(path, sizeof path, "%s/step%03d.safetensors", DWS_TRAJECTORY_DIR, step);
  auto cp = Checkpoint::open(path);
  std::vector<Tensor> out;
  if (!cp.ok()) return out;
  for (const CheckpointTensor& t : cp->tensors()) {
    if (out.size() == 12) break;
    Tensor c{t.name, t.dtype, t.shape, {}};
    if (c.shape.size() == 2) c.shape[0] = std::min<uint64_t>(c.shape[0], 8);
    if (c.shape.size() == 1) c.shape[0] = std::min<uint64_t>(c.shape[0], 512);
    const uint64_t n = *checked_numel(c.shape);  // a cropped valid shape
    const auto bytes = cp->bytes(t);
    c.bytes.assign(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(n * dtype_size_bytes(t.dtype)));
    out.push_back(std::move(c));
  }
  return out;
}

inline Status write_model(const std::string& path, const std::vector<Tensor>& tensors) {
  std::vector<TensorWrite> writes;
  for (const Tensor& t : tensors) writes.push_back({{t.name, t.dtype, t.shape}, t.bytes});
  return write_safetensors(path, writes, {});
}

inline uint64_t numel_of(const Tensor& t) { return *checked_numel(t.shape); }

// The encodings fuzz_decode drives (every modified-tensor encoding; kFull has no decoder).
inline constexpr Encoding kDecodeEncodings[] = {Encoding::kIndices, Encoding::kGaps, Encoding::kGapsZstd, Encoding::kXorZstd,
                                                Encoding::kNative};

// fuzz_decode's input: [selector u8: encoding index * 16 + tensor index][declared changes u32 LE]
// then per payload but the last [length u32 LE][bytes], and the last payload's bytes to the end. The
// payloads' roles, dtypes and count are those the reference encoding of that tensor carries.
struct DecodeInput {
  size_t encoding_index = 0, tensor_index = 0;
  uint64_t changes = 0;
  std::vector<std::vector<std::byte>> payloads;
};

inline bool parse_decode_input(std::span<const uint8_t> in, size_t payload_count, DecodeInput* out) {
  if (in.size() < 5 || payload_count == 0) return false;
  out->encoding_index = in[0] / 16;
  out->tensor_index = in[0] % 16;
  uint32_t changes = 0;
  std::memcpy(&changes, in.data() + 1, 4);
  out->changes = changes;
  size_t at = 5;
  out->payloads.clear();
  for (size_t k = 0; k < payload_count; ++k) {
    size_t len = in.size() - at;
    if (k + 1 < payload_count) {
      if (in.size() - at < 4) return false;
      uint32_t l = 0;
      std::memcpy(&l, in.data() + at, 4);
      at += 4;
      if (l > in.size() - at) return false;
      len = l;
    }
    const auto* p = reinterpret_cast<const std::byte*>(in.data() + at);
    out->payloads.emplace_back(p, p + len);
    at += len;
  }
  return true;
}

inline std::vector<uint8_t> serialize_decode_input(size_t encoding_index, size_t tensor_index, const codec::EncodedTensor& e) {
  std::vector<uint8_t> out{static_cast<uint8_t>(encoding_index * 16 + tensor_index)};
  const uint32_t changes = static_cast<uint32_t>(e.changes);
  out.insert(out.end(), reinterpret_cast<const uint8_t*>(&changes), reinterpret_cast<const uint8_t*>(&changes) + 4);
  for (size_t k = 0; k < e.payloads.size(); ++k) {
    const auto& b = e.payloads[k].bytes;
    if (k + 1 < e.payloads.size()) {
      const uint32_t l = static_cast<uint32_t>(b.size());
      out.insert(out.end(), reinterpret_cast<const uint8_t*>(&l), reinterpret_cast<const uint8_t*>(&l) + 4);
    }
    out.insert(out.end(), reinterpret_cast<const uint8_t*>(b.data()), reinterpret_cast<const uint8_t*>(b.data()) + b.size());
  }
  return out;
}

// The reference encoding of one cropped tensor between two steps (its changed positions
// found by dws's exact diff); a tensor that did not change encodes zero changes.
inline Result<codec::EncodedTensor> reference_encoding(Encoding enc, const Tensor& base, const Tensor& target) {
  DWS_ASSIGN_OR_RETURN(std::vector<uint64_t> positions, diff_elements(base.bytes, target.bytes, dtype_size_bytes(base.dtype), 1));
  codec::EncodeInput input{base.dtype, base.bytes, target.bytes, positions};
  return codec::encode_tensor(enc, input, base.shape, {});
}

}  // namespace dws::fuzz
