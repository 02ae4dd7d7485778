#include "codec/codecs.h"

#include "codec/change_sink.h"
#include "codec/native.h"

#include <zstd.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <memory>

namespace dws {

static_assert(std::endian::native == std::endian::little, "dws payloads are little-endian; big-endian hosts need byte swaps");

std::string_view encoding_name(Encoding encoding) {
  switch (encoding) {
    case Encoding::kIndices: return "indices";
    case Encoding::kGaps: return "gaps";
    case Encoding::kGapsZstd: return "gaps_zstd";
    case Encoding::kXorZstd: return "xor_zstd";
    case Encoding::kFull: return "full";
    case Encoding::kNative: return "native";
    case Encoding::kAuto: return "auto";
  }
  return "?";
}

std::optional<Encoding> encoding_from_name(std::string_view name) {
  for (Encoding e : {Encoding::kIndices, Encoding::kGaps, Encoding::kGapsZstd, Encoding::kXorZstd, Encoding::kFull,
                     Encoding::kNative, Encoding::kAuto}) {
    if (encoding_name(e) == name) return e;
  }
  return std::nullopt;
}

bool encoding_needs_base_values(Encoding encoding) {
  return encoding == Encoding::kXorZstd || encoding == Encoding::kNative;
}

namespace codec {

namespace {

constexpr size_t kXorChunkBytes = 1 << 20;       // streaming granularity of xor_zstd

struct ZstdCCtxDeleter { void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); } };
struct ZstdDCtxDeleter { void operator()(ZSTD_DCtx* d) const { ZSTD_freeDCtx(d); } };

Status decode_error(const std::string& msg) { return make_error(ErrorCode::kDecode, msg); }
Status positions_error(const std::string& msg) { return make_error(ErrorCode::kPositions, msg); }

template <typename T>
void append_le(std::vector<std::byte>& out, T v) {
  const size_t at = out.size();
  out.resize(at + sizeof(T));
  std::memcpy(out.data() + at, &v, sizeof(T));
}

std::vector<std::byte> gather_values(std::span<const std::byte> target, size_t w, std::span<const uint64_t> positions) {
  std::vector<std::byte> out(positions.size() * w);
  std::byte* dst = out.data();
  const std::byte* src = target.data();
  switch (w) {
    case 1: for (uint64_t p : positions) *dst++ = src[p]; break;
    case 2: for (uint64_t p : positions) { std::memcpy(dst, src + 2 * p, 2); dst += 2; } break;
    case 4: for (uint64_t p : positions) { std::memcpy(dst, src + 4 * p, 4); dst += 4; } break;
    default: for (uint64_t p : positions) { std::memcpy(dst, src + 8 * p, 8); dst += 8; } break;
  }
  return out;
}

DType gap_dtype_for(std::span<const uint64_t> positions) {
  uint64_t max_gap = 0, prev = 0;
  for (size_t i = 0; i < positions.size(); ++i) {
    max_gap = std::max(max_gap, positions[i] - (i ? prev : 0));
    prev = positions[i];
  }
  if (max_gap <= 0xFFFF) return DType::kU16;
  if (max_gap <= 0xFFFFFFFFull) return DType::kU32;
  return DType::kU64;
}

std::vector<std::byte> encode_gaps(std::span<const uint64_t> positions, DType gap_dtype) {
  std::vector<std::byte> out;
  out.reserve(positions.size() * dtype_size_bytes(gap_dtype));
  uint64_t prev = 0;
  for (size_t i = 0; i < positions.size(); ++i) {
    uint64_t gap = positions[i] - (i ? prev : 0);
    prev = positions[i];
    if (gap_dtype == DType::kU16) append_le(out, static_cast<uint16_t>(gap));
    else if (gap_dtype == DType::kU32) append_le(out, static_cast<uint32_t>(gap));
    else append_le(out, gap);
  }
  return out;
}

Result<std::vector<std::byte>> zstd_compress(std::span<const std::byte> raw, int level) {
  std::vector<std::byte> out(ZSTD_compressBound(raw.size()));
  size_t n = ZSTD_compress(out.data(), out.size(), raw.data(), raw.size(), level);
  if (ZSTD_isError(n)) return make_error(ErrorCode::kInternal, std::string("zstd compress: ") + ZSTD_getErrorName(n));
  out.resize(n);
  return out;
}

// XOR of target with base, streamed through zstd in fixed chunks so memory stays bounded.
Result<std::vector<std::byte>> xor_zstd_compress(std::span<const std::byte> base, std::span<const std::byte> target, int level) {
  std::unique_ptr<ZSTD_CCtx, ZstdCCtxDeleter> cctx(ZSTD_createCCtx());
  ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_compressionLevel, level);
  ZSTD_CCtx_setPledgedSrcSize(cctx.get(), target.size());
  std::vector<std::byte> x(std::min(kXorChunkBytes, target.size()));
  std::vector<std::byte> out;
  std::vector<std::byte> buf(ZSTD_CStreamOutSize());
  size_t done = 0;
  do {
    const size_t n = std::min(kXorChunkBytes, target.size() - done);
    for (size_t i = 0; i < n; ++i) x[i] = base[done + i] ^ target[done + i];
    done += n;
    const ZSTD_EndDirective mode = done == target.size() ? ZSTD_e_end : ZSTD_e_continue;
    ZSTD_inBuffer in{x.data(), n, 0};
    for (;;) {
      ZSTD_outBuffer o{buf.data(), buf.size(), 0};
      size_t rem = ZSTD_compressStream2(cctx.get(), &o, &in, mode);
      if (ZSTD_isError(rem)) return make_error(ErrorCode::kInternal, std::string("zstd compress: ") + ZSTD_getErrorName(rem));
      out.insert(out.end(), buf.begin(), buf.begin() + static_cast<ptrdiff_t>(o.pos));
      if (mode == ZSTD_e_end ? rem == 0 : in.pos == in.size) break;
    }
  } while (done < target.size());
  return out;
}

uint64_t payload_size(const EncodedTensor& e) {
  uint64_t n = 0;
  for (const auto& p : e.payloads) n += p.bytes.size();
  return n;
}

}  // namespace

Result<EncodedTensor> encode_tensor(Encoding encoding, const EncodeInput& input, std::span<const uint64_t> shape,
                                    const EncodeOptions& options) {
  const int zstd_level = options.zstd_level;
  if (encoding == Encoding::kAuto) {
    // native is near the entropy at every density for small ULP moves; the dense forms win only when
    // values jump far (random-like changes) at high density, so they are tried only there.
    const uint64_t numel = input.target.size() / dtype_size_bytes(input.dtype);
    const double density = numel ? static_cast<double>(input.positions.size()) / static_cast<double>(numel) : 0.0;
    DWS_ASSIGN_OR_RETURN(EncodedTensor best, encode_tensor(Encoding::kNative, input, shape, options));
    auto consider = [&](Encoding e) -> Status {
      DWS_ASSIGN_OR_RETURN(EncodedTensor other, encode_tensor(e, input, shape, options));
      if (payload_size(other) < payload_size(best)) best = std::move(other);
      return Status::Ok();
    };
    if (density >= kAutoDenseMinDensity) DWS_RETURN_IF_ERROR(consider(Encoding::kXorZstd));
    if (density >= kAutoFullMinDensity) DWS_RETURN_IF_ERROR(consider(Encoding::kFull));
    return best;
  }
  EncodedTensor out;
  out.encoding = encoding;
  const size_t w = dtype_size_bytes(input.dtype);
  const uint64_t n = input.positions.size();
  out.changes = encoding == Encoding::kFull ? input.target.size() / w : n;
  switch (encoding) {
    case Encoding::kFull:
      out.payloads.push_back({"data", input.dtype, {shape.begin(), shape.end()},
                              std::vector<std::byte>(input.target.begin(), input.target.end())});
      return out;
    case Encoding::kIndices: {
      const uint64_t numel = input.target.size() / w;
      out.index_dtype = numel <= (1ull << 31) ? DType::kI32 : DType::kI64;
      std::vector<std::byte> idx;
      idx.reserve(n * dtype_size_bytes(out.index_dtype));
      for (uint64_t p : input.positions) {
        if (out.index_dtype == DType::kI32) append_le(idx, static_cast<int32_t>(p));
        else append_le(idx, static_cast<int64_t>(p));
      }
      out.payloads.push_back({"idx", out.index_dtype, {n}, std::move(idx)});
      out.payloads.push_back({"val", input.dtype, {n}, gather_values(input.target, w, input.positions)});
      return out;
    }
    case Encoding::kGaps:
      out.index_dtype = gap_dtype_for(input.positions);
      out.payloads.push_back({"gaps", out.index_dtype, {n}, encode_gaps(input.positions, out.index_dtype)});
      out.payloads.push_back({"val", input.dtype, {n}, gather_values(input.target, w, input.positions)});
      return out;
    case Encoding::kGapsZstd: {
      out.index_dtype = gap_dtype_for(input.positions);
      std::vector<std::byte> raw = encode_gaps(input.positions, out.index_dtype);
      std::vector<std::byte> vals = gather_values(input.target, w, input.positions);
      raw.insert(raw.end(), vals.begin(), vals.end());
      DWS_ASSIGN_OR_RETURN(std::vector<std::byte> z, zstd_compress(raw, zstd_level));
      const uint64_t zn = z.size();
      out.payloads.push_back({"zstd", DType::kU8, {zn}, std::move(z)});
      return out;
    }
    case Encoding::kNative: {
      if (input.base.size() != input.target.size()) return make_error(ErrorCode::kInternal, "native: base/target sizes differ");
      DWS_ASSIGN_OR_RETURN(std::vector<std::byte> z, native::encode(input.dtype, input.base, input.target, input.positions,
                                                                         {options.class_positions, std::nullopt}));
      const uint64_t zn = z.size();
      out.payloads.push_back({"native", DType::kU8, {zn}, std::move(z)});
      return out;
    }
    case Encoding::kXorZstd: {
      if (input.base.size() != input.target.size()) return make_error(ErrorCode::kInternal, "xor_zstd: base/target sizes differ");
      DWS_ASSIGN_OR_RETURN(std::vector<std::byte> z, xor_zstd_compress(input.base, input.target, zstd_level));
      const uint64_t zn = z.size();
      out.payloads.push_back({"xor", DType::kU8, {zn}, std::move(z)});
      return out;
    }
    case Encoding::kAuto: break;
  }
  return make_error(ErrorCode::kInternal, "encode: unknown encoding");
}

// ---- decoding ----

Status check_payload_shapes(const DecodeParams& p, std::span<const PayloadView> payloads) {
  auto expect_roles = [&](std::initializer_list<std::string_view> roles) -> Status {
    if (payloads.size() != roles.size()) {
      return make_error(ErrorCode::kPatchMetadata, std::string(encoding_name(p.encoding)) + " needs " +
                                                       std::to_string(roles.size()) + " payload tensors, found " +
                                                       std::to_string(payloads.size()));
    }
    size_t i = 0;
    for (std::string_view r : roles) {
      if (payloads[i].role != r) {
        return make_error(ErrorCode::kPatchMetadata, "payload " + std::to_string(i) + " must be '" + std::string(r) +
                                                         "', found '" + std::string(payloads[i].role) + "'");
      }
      ++i;
    }
    return Status::Ok();
  };
  auto expect_1d = [&](const PayloadView& v, DType dtype, std::optional<uint64_t> count) -> Status {
    if (v.dtype != dtype || v.shape.size() != 1 || (count && v.shape[0] != *count)) {
      return make_error(ErrorCode::kPatchMetadata,
                        "payload '" + std::string(v.role) + "' is " + std::string(dtype_name(v.dtype)) + " " +
                            shape_string(v.shape) + ", expected " + std::string(dtype_name(dtype)) + " [" +
                            (count ? std::to_string(*count) : std::string("n")) + "]");
    }
    return Status::Ok();
  };
  if (p.encoding == Encoding::kFull) return expect_roles({"data"});
  if (p.changes == 0 || p.changes > p.numel) {
    return make_error(ErrorCode::kPatchMetadata, "change count " + std::to_string(p.changes) + " outside [1, " +
                                                     std::to_string(p.numel) + "]");
  }
  const bool index_ok = p.encoding == Encoding::kIndices
                            ? (p.index_dtype == DType::kI32 || p.index_dtype == DType::kI64)
                            : (p.index_dtype == DType::kU16 || p.index_dtype == DType::kU32 || p.index_dtype == DType::kU64);
  if (p.encoding != Encoding::kXorZstd && p.encoding != Encoding::kNative && !index_ok) {
    return make_error(ErrorCode::kPatchMetadata, "index dtype " + std::string(dtype_name(p.index_dtype)) + " not allowed for " +
                                                     std::string(encoding_name(p.encoding)));
  }
  switch (p.encoding) {
    case Encoding::kIndices:
      DWS_RETURN_IF_ERROR(expect_roles({"idx", "val"}));
      DWS_RETURN_IF_ERROR(expect_1d(payloads[0], p.index_dtype, p.changes));
      return expect_1d(payloads[1], p.dtype, p.changes);
    case Encoding::kGaps:
      DWS_RETURN_IF_ERROR(expect_roles({"gaps", "val"}));
      DWS_RETURN_IF_ERROR(expect_1d(payloads[0], p.index_dtype, p.changes));
      return expect_1d(payloads[1], p.dtype, p.changes);
    case Encoding::kGapsZstd:
      DWS_RETURN_IF_ERROR(expect_roles({"zstd"}));
      return expect_1d(payloads[0], DType::kU8, std::nullopt);
    case Encoding::kXorZstd:
      DWS_RETURN_IF_ERROR(expect_roles({"xor"}));
      return expect_1d(payloads[0], DType::kU8, std::nullopt);
    case Encoding::kNative:
      DWS_RETURN_IF_ERROR(expect_roles({"native"}));
      return expect_1d(payloads[0], DType::kU8, std::nullopt);
    case Encoding::kFull: break;
    case Encoding::kAuto: return make_error(ErrorCode::kPatchMetadata, "'auto' is not a stored tensor encoding");
  }
  return Status::Ok();
}

namespace {

// Decompresses one frame that must produce exactly `expected` bytes. Memory grows with what the frame
// actually produces (never to a size only claimed by a header), and decoding stops at the first byte
// beyond `expected`: a decompression bomb costs at most `expected` bytes.
Result<std::vector<std::byte>> zstd_decompress_exact(std::span<const std::byte> z, uint64_t expected, const char* what) {
  std::unique_ptr<ZSTD_DCtx, ZstdDCtxDeleter> dctx(ZSTD_createDCtx());
  std::vector<std::byte> out(std::min<uint64_t>(expected, 1u << 20));
  ZSTD_inBuffer in{z.data(), z.size(), 0};
  size_t produced = 0;
  for (;;) {
    if (produced == out.size() && out.size() < expected) out.resize(std::min<uint64_t>(expected, 2 * out.size()));
    if (produced == out.size()) {
      // Full: the frame must end here. Probe with a 1-byte buffer for excess output.
      std::byte probe;
      ZSTD_outBuffer o{&probe, 1, 0};
      size_t rc = ZSTD_decompressStream(dctx.get(), &o, &in);
      if (ZSTD_isError(rc)) return decode_error(std::string(what) + ": " + ZSTD_getErrorName(rc));
      if (o.pos != 0) return decode_error(std::string(what) + " decodes to more than the expected " + std::to_string(expected) + " bytes");
      if (rc != 0) return decode_error(std::string(what) + ": truncated frame");
      break;
    }
    ZSTD_outBuffer o{out.data() + produced, out.size() - produced, 0};
    const size_t before_in = in.pos;
    size_t rc = ZSTD_decompressStream(dctx.get(), &o, &in);
    if (ZSTD_isError(rc)) return decode_error(std::string(what) + ": " + ZSTD_getErrorName(rc));
    produced += o.pos;
    if (rc == 0) break;
    if (o.pos == 0 && in.pos == before_in) return decode_error(std::string(what) + ": truncated frame");
  }
  if (produced != expected) {
    return decode_error(std::string(what) + " decodes to " + std::to_string(produced) + " bytes, expected " + std::to_string(expected));
  }
  if (in.pos != in.size) return decode_error(std::string(what) + ": " + std::to_string(in.size - in.pos) + " trailing bytes after the frame");
  return out;
}

template <typename T>
T load(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// positions encoded as indices (absolute) or gaps, followed by values; both already size-checked.
Status decode_position_stream(bool gaps, DType index_dtype, std::span<const std::byte> index_bytes,
                              std::span<const std::byte> values, uint64_t n, uint64_t numel, size_t w,
                              const ChangeSink& sink) {
  PositionChecker checker(numel, sink, w, n);
  const size_t iw = dtype_size_bytes(index_dtype);
  uint64_t pos = 0;
  size_t value_at = 0;
  for (uint64_t i = 0; i < n; ++i) {
    const std::byte* q = index_bytes.data() + i * iw;
    uint64_t v;
    switch (index_dtype) {
      case DType::kI32: {
        int32_t s = load<int32_t>(q);
        if (s < 0) return positions_error("negative position " + std::to_string(s));
        v = static_cast<uint64_t>(s);
        break;
      }
      case DType::kI64: {
        int64_t s = load<int64_t>(q);
        if (s < 0) return positions_error("negative position " + std::to_string(s));
        v = static_cast<uint64_t>(s);
        break;
      }
      case DType::kU16: v = load<uint16_t>(q); break;
      case DType::kU32: v = load<uint32_t>(q); break;
      default: v = load<uint64_t>(q); break;
    }
    if (gaps) {
      if (i > 0 && v == 0) return positions_error("zero gap after position " + std::to_string(pos) + " (duplicate)");
      if (__builtin_add_overflow(i == 0 ? 0 : pos, v, &pos)) return positions_error("gap sum overflows");
    } else {
      pos = v;
    }
    DWS_RETURN_IF_ERROR(checker.push(pos));
    if (checker.full()) {
      DWS_RETURN_IF_ERROR(checker.flush(values.subspan(value_at)));
      value_at += kSinkBatch * w;
    }
  }
  return checker.flush(values.subspan(value_at));
}

// operands: the sink receives the XOR masks (ChangeOp::kXor) and `base` is unused.
Status decode_xor_zstd(const DecodeParams& p, std::span<const std::byte> z, std::span<const std::byte> base,
                       const ChangeSink& sink, bool operands) {
  const size_t w = dtype_size_bytes(p.dtype);
  const uint64_t tensor_bytes = p.numel * w;
  if (!operands && base.size() != tensor_bytes) return make_error(ErrorCode::kInternal, "xor_zstd: base has the wrong size");
  const unsigned long long declared = ZSTD_getFrameContentSize(z.data(), z.size());
  if (declared != ZSTD_CONTENTSIZE_UNKNOWN && declared != tensor_bytes) {
    return decode_error("xor_zstd frame declares " + std::to_string(declared) + " bytes, tensor has " + std::to_string(tensor_bytes));
  }
  std::unique_ptr<ZSTD_DCtx, ZstdDCtxDeleter> dctx(ZSTD_createDCtx());
  // A chunk is a whole number of elements; positions/values are collected per chunk and flushed.
  const size_t chunk = std::max<size_t>(kXorChunkBytes / w * w, w);
  std::vector<std::byte> buf(chunk);
  std::vector<std::byte> values;
  values.reserve(std::min<uint64_t>(p.changes, kSinkBatch) * w);
  PositionChecker checker(p.numel, sink, w, p.changes);
  ZSTD_inBuffer in{z.data(), z.size(), 0};
  uint64_t produced = 0;
  size_t filled = 0;
  bool frame_done = false;
  auto consume = [&](size_t bytes) -> Status {
    // bytes is a multiple of w; element k of this buffer is element produced/w + k.
    const uint64_t first = produced / w;
    for (size_t k = 0; k < bytes / w; ++k) {
      const std::byte* x = buf.data() + k * w;
      bool nonzero = false;
      for (size_t b = 0; b < w; ++b) nonzero |= x[b] != std::byte{0};
      if (!nonzero) continue;
      const uint64_t pos = first + k;
      if (checker.count() == p.changes) {
        return make_error(ErrorCode::kPatchMetadata, "xor_zstd holds more than the " + std::to_string(p.changes) +
                                                         " changes its metadata declares");
      }
      DWS_RETURN_IF_ERROR(checker.push(pos));
      for (size_t b = 0; b < w; ++b) values.push_back(operands ? x[b] : base[pos * w + b] ^ x[b]);
      if (checker.full()) {
        DWS_RETURN_IF_ERROR(checker.flush(values));
        values.clear();
      }
    }
    produced += bytes;
    return Status::Ok();
  };
  while (!frame_done) {
    ZSTD_outBuffer out{buf.data() + filled, buf.size() - filled, 0};
    const size_t before_in = in.pos;
    size_t rc = ZSTD_decompressStream(dctx.get(), &out, &in);
    if (ZSTD_isError(rc)) return decode_error(std::string("xor_zstd: ") + ZSTD_getErrorName(rc));
    filled += out.pos;
    if (produced + filled > tensor_bytes) {
      return decode_error("xor_zstd decodes to more than the tensor's " + std::to_string(tensor_bytes) + " bytes");
    }
    frame_done = rc == 0;
    if (filled == buf.size() || frame_done) {
      if (filled % w != 0) return decode_error("xor_zstd decodes to a partial element");
      DWS_RETURN_IF_ERROR(consume(filled));
      filled = 0;
    } else if (out.pos == 0 && in.pos == before_in) {
      return decode_error("xor_zstd: truncated frame");
    }
  }
  if (in.pos != in.size) return decode_error("xor_zstd: " + std::to_string(in.size - in.pos) + " trailing bytes after the frame");
  if (produced != tensor_bytes) {
    return decode_error("xor_zstd decodes to " + std::to_string(produced) + " bytes, tensor has " + std::to_string(tensor_bytes));
  }
  DWS_RETURN_IF_ERROR(checker.flush(values));
  if (checker.count() != p.changes) {
    return make_error(ErrorCode::kPatchMetadata, "xor_zstd holds " + std::to_string(checker.count()) +
                                                     " changes, metadata says " + std::to_string(p.changes));
  }
  return Status::Ok();
}


// operands: see decode_operands; `base` is then empty.
Status decode_impl(const DecodeParams& p, std::span<const PayloadView> payloads, std::span<const std::byte> base,
                   const ChangeSink& sink, bool operands) {
  DWS_RETURN_IF_ERROR(check_payload_shapes(p, payloads));
  const size_t w = dtype_size_bytes(p.dtype);
  switch (p.encoding) {
    case Encoding::kIndices:
    case Encoding::kGaps:
      return decode_position_stream(p.encoding == Encoding::kGaps, p.index_dtype, payloads[0].bytes, payloads[1].bytes,
                                    p.changes, p.numel, w, sink);
    case Encoding::kGapsZstd: {
      const size_t iw = dtype_size_bytes(p.index_dtype);
      uint64_t expected = 0;
      if (__builtin_mul_overflow(p.changes, static_cast<uint64_t>(iw + w), &expected)) {
        return make_error(ErrorCode::kPatchMetadata, "gaps_zstd: change count " + std::to_string(p.changes) + " overflows");
      }
      const std::span<const std::byte> z = payloads[0].bytes;
      const unsigned long long declared = ZSTD_getFrameContentSize(z.data(), z.size());
      if (declared == ZSTD_CONTENTSIZE_ERROR) return decode_error("gaps_zstd: not a zstd frame");
      if (declared != ZSTD_CONTENTSIZE_UNKNOWN && declared != expected) {
        return decode_error("gaps_zstd frame declares " + std::to_string(declared) + " bytes, " + std::to_string(p.changes) +
                            " changes need " + std::to_string(expected));
      }
      DWS_ASSIGN_OR_RETURN(std::vector<std::byte> raw, zstd_decompress_exact(z, expected, "gaps_zstd"));
      std::span<const std::byte> all(raw);
      return decode_position_stream(true, p.index_dtype, all.first(p.changes * iw), all.subspan(p.changes * iw), p.changes,
                                    p.numel, w, sink);
    }
    case Encoding::kXorZstd:
      return decode_xor_zstd(p, payloads[0].bytes, base, sink, operands);
    case Encoding::kNative:
      if (operands) return native::decode_operands(p.dtype, p.numel, p.changes, payloads[0].bytes, sink);
      if (base.size() != p.numel * w) return make_error(ErrorCode::kInternal, "native: base has the wrong size");
      return native::decode(p.dtype, p.numel, p.changes, payloads[0].bytes, base, sink);
    case Encoding::kFull:
    case Encoding::kAuto:
      break;
  }
  return make_error(ErrorCode::kInternal, "decode called for a full or auto tensor");
}

}  // namespace

Status decode_changes(const DecodeParams& p, std::span<const PayloadView> payloads, std::span<const std::byte> base,
                      const ChangeSink& sink) {
  return decode_impl(p, payloads, base, sink, false);
}

Status decode_operands(const DecodeParams& p, std::span<const PayloadView> payloads, const ChangeSink& sink) {
  return decode_impl(p, payloads, {}, sink, true);
}

ChangeOp change_op(Encoding encoding) {
  switch (encoding) {
    case Encoding::kXorZstd: return ChangeOp::kXor;
    case Encoding::kNative: return ChangeOp::kAddKey;
    default: return ChangeOp::kSet;
  }
}

size_t operand_size_bytes(ChangeOp op, DType dtype) {
  return op == ChangeOp::kAddKey ? sizeof(uint64_t) : dtype_size_bytes(dtype);
}

void apply_operands(DType dtype, ChangeOp op, std::span<std::byte> tensor, std::span<const uint64_t> positions,
                    std::span<const std::byte> operands) {
  const size_t w = dtype_size_bytes(dtype);
  const size_t ow = operand_size_bytes(op, dtype);
  for (size_t i = 0; i < positions.size(); ++i) {
    std::byte* e = tensor.data() + positions[i] * w;
    const std::byte* o = operands.data() + i * ow;
    switch (op) {
      case ChangeOp::kSet: std::memcpy(e, o, w); break;
      case ChangeOp::kXor:
        for (size_t b = 0; b < w; ++b) e[b] ^= o[b];
        break;
      case ChangeOp::kAddKey: {
        uint64_t bits = 0, zz = 0;
        std::memcpy(&bits, e, w);
        std::memcpy(&zz, o, sizeof zz);
        bits = native::add_key_distance(dtype, bits, zz);
        std::memcpy(e, &bits, w);
        break;
      }
    }
  }
}

}  // namespace codec
}  // namespace dws
