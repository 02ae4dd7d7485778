#include "codec/native.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <string>

#include "codec/change_sink.h"
#include "codec/rans.h"

namespace dws::codec::native {

namespace {

constexpr uint8_t kVersion = 1;
constexpr uint32_t kGapAlphabet = 65;     // bit length of a gap: 0..64
constexpr uint32_t kValueAlphabet = 256;  // zigzag distance 0..254, 255 = escape
constexpr uint64_t kEscape = 255;

Status decode_error(const std::string& msg) { return make_error(ErrorCode::kDecode, "native: " + msg); }

bool is_float(DType d) {
  return d == DType::kF8_E4M3 || d == DType::kF8_E5M2 || d == DType::kF16 || d == DType::kBF16 || d == DType::kF32 ||
         d == DType::kF64;
}

// All bits of a W-byte element, and its top (sign) bit.
template <size_t W>
inline constexpr uint64_t kWidthMask = W == 8 ? ~0ull : (1ull << (8 * W)) - 1;
template <size_t W>
inline constexpr uint64_t kSignBit = 1ull << (8 * W - 1);

template <size_t W>
uint64_t load(const std::byte* p) {
  uint64_t v = 0;
  std::memcpy(&v, p, W);  // little-endian host (static_assert in codecs.cc)
  return v;
}

template <size_t W>
void store(std::byte* p, uint64_t v) {
  std::memcpy(p, &v, W);
}

template <size_t W, bool kFloat>
uint64_t key_of(uint64_t bits) {
  if constexpr (!kFloat) {
    return bits;
  } else {
    return (bits & kSignBit<W>) ? (~bits & kWidthMask<W>) : (bits | kSignBit<W>);
  }
}

template <size_t W, bool kFloat>
uint64_t bits_of(uint64_t key) {
  if constexpr (!kFloat) {
    return key;
  } else {
    return (key & kSignBit<W>) ? (key & ~kSignBit<W>) : (~key & kWidthMask<W>);
  }
}

// Calls fn.template operator()<W, kFloat>() for the dtype's width and float-ness.
template <typename Fn>
auto dispatch(DType dtype, Fn&& fn) {
  const bool f = is_float(dtype);
  switch (dtype_size_bytes(dtype)) {
    case 1: return f ? fn.template operator()<1, true>() : fn.template operator()<1, false>();
    case 2: return f ? fn.template operator()<2, true>() : fn.template operator()<2, false>();
    case 4: return f ? fn.template operator()<4, true>() : fn.template operator()<4, false>();
    default: return f ? fn.template operator()<8, true>() : fn.template operator()<8, false>();
  }
}

// Sign-extends a w-byte value to int64.
int64_t sign_extend(uint64_t v, size_t w) {
  if (w == 8) return static_cast<int64_t>(v);
  const unsigned shift = static_cast<unsigned>(64 - 8 * w);
  return static_cast<int64_t>(v << shift) >> shift;
}

uint64_t zigzag(int64_t v) { return (static_cast<uint64_t>(v) << 1) ^ static_cast<uint64_t>(v >> 63); }
int64_t unzigzag(uint64_t z) { return static_cast<int64_t>(z >> 1) ^ -static_cast<int64_t>(z & 1); }

uint32_t bit_length(uint64_t v) { return v == 0 ? 0 : 64u - static_cast<uint32_t>(std::countl_zero(v)); }

class BitWriter {
 public:
  void put(uint64_t value, uint32_t bits) {
    for (uint32_t done = 0; done < bits;) {
      const uint32_t take = std::min(bits - done, 64u - fill_);
      const uint64_t chunk = take == 64 ? value >> done : (value >> done) & ((1ull << take) - 1);
      acc_ |= fill_ == 64 ? 0 : chunk << fill_;
      fill_ += take;
      done += take;
      if (fill_ == 64) flush_word();
    }
  }
  std::vector<std::byte> finish() {
    while (fill_ > 0) {
      out_.push_back(static_cast<std::byte>(acc_ & 0xFF));
      acc_ >>= 8;
      fill_ = fill_ > 8 ? fill_ - 8 : 0;
    }
    return std::move(out_);
  }

 private:
  void flush_word() {
    for (int i = 0; i < 8; ++i) out_.push_back(static_cast<std::byte>((acc_ >> (8 * i)) & 0xFF));
    acc_ = 0;
    fill_ = 0;
  }
  std::vector<std::byte> out_;
  uint64_t acc_ = 0;
  uint32_t fill_ = 0;
};

class BitReader {
 public:
  explicit BitReader(std::span<const std::byte> in) : in_(in) {}
  // Reads `bits` (0..64) LSB-first; false when the input runs out.
  bool get(uint32_t bits, uint64_t* out) {
    if (bits == 0) {
      *out = 0;
      return true;
    }
    if (bits > 64 || static_cast<uint64_t>(bits) > total_bits() - pos_) return false;
    uint64_t v = 0;
    uint32_t got = 0;
    while (got < bits) {
      const uint64_t byte_index = pos_ / 8;
      const uint32_t bit_in_byte = static_cast<uint32_t>(pos_ % 8);
      // Load up to 8 bytes starting at byte_index.
      uint64_t word = 0;
      const size_t avail = std::min<size_t>(8, in_.size() - byte_index);
      if (avail == 8) {
        std::memcpy(&word, in_.data() + byte_index, 8);
      } else {
        for (size_t k = 0; k < avail; ++k) word |= static_cast<uint64_t>(in_[byte_index + k]) << (8 * k);
      }
      word >>= bit_in_byte;
      const uint32_t take = std::min<uint32_t>(bits - got, std::min<uint32_t>(64 - bit_in_byte, static_cast<uint32_t>(avail * 8) - bit_in_byte));
      const uint64_t mask = take == 64 ? ~0ull : (1ull << take) - 1;
      v |= (word & mask) << got;
      got += take;
      pos_ += take;
    }
    *out = v;
    return true;
  }
  // All bits used, and the padding of the last byte is zero.
  bool finished_cleanly() const {
    if ((pos_ + 7) / 8 != in_.size()) return false;
    if (pos_ % 8 == 0) return true;
    return (static_cast<uint64_t>(in_.back()) >> (pos_ % 8)) == 0;
  }

 private:
  uint64_t total_bits() const { return static_cast<uint64_t>(in_.size()) * 8; }
  std::span<const std::byte> in_;
  uint64_t pos_ = 0;
};

void put_section(std::vector<std::byte>& out, const std::vector<std::byte>& section) {
  rans::put_varint(out, section.size());
  out.insert(out.end(), section.begin(), section.end());
}

bool get_section(std::span<const std::byte> in, size_t* at, std::span<const std::byte>* section) {
  uint64_t n = 0;
  if (!rans::get_varint(in, at, &n) || n > in.size() - *at) return false;
  *section = in.subspan(*at, n);
  *at += n;
  return true;
}

template <size_t W, bool kFloat>
Status decode_symbols(rans::Decoder& dec, const rans::Model& gap_model, const rans::Model& value_model,
                      std::span<const std::byte> mantissa_bytes, std::span<const std::byte> escape_bytes, uint64_t n,
                      uint64_t numel, std::span<const std::byte> base, const ChangeSink& sink) {
  BitReader mantissas(mantissa_bytes);
  size_t escape_at = 0;
  PositionChecker checker(numel, sink, W, n);
  const size_t batch = static_cast<size_t>(std::min<uint64_t>(n, kSinkBatch));
  std::vector<std::byte> values(batch * W);
  std::vector<uint64_t> distances(batch);
  // Two phases per batch: the symbol decode is a serial dependency chain, so reading the base inside it
  // would serialize one cache miss per change on models larger than the cache. Phase 2 reads the base
  // in a loop of independent loads that the CPU overlaps.
  auto finish_batch = [&]() -> Status {
    const std::span<const uint64_t> pos = checker.pending_positions();
    for (size_t k = 0; k < pos.size(); ++k) {
      const uint64_t kb = key_of<W, kFloat>(load<W>(base.data() + pos[k] * W));
      const uint64_t kt = (kb + static_cast<uint64_t>(unzigzag(distances[k]))) & kWidthMask<W>;
      store<W>(values.data() + k * W, bits_of<W, kFloat>(kt));
    }
    return checker.flush(values);
  };
  uint64_t prev = 0;
  for (uint64_t i = 0; i < n; ++i) {
    uint32_t len = 0;
    if (!dec.next(gap_model, &len)) return decode_error("rANS stream ends early");
    uint64_t gap = 0;
    if (len == 1) {
      gap = 1;
    } else if (len >= 2) {
      uint64_t low = 0;
      if (!mantissas.get(len - 1, &low)) return decode_error("mantissa bits run out");
      gap = (1ull << (len - 1)) | low;
    }
    uint64_t p = 0;
    if (i == 0) {
      p = gap;
    } else if (__builtin_add_overflow(prev, gap, &p) || __builtin_add_overflow(p, 1ull, &p)) {
      return make_error(ErrorCode::kPositions, "native: gap sum overflows");
    }
    DWS_RETURN_IF_ERROR(checker.push(p));
    prev = p;
    uint32_t sym = 0;
    if (!dec.next(value_model, &sym)) return decode_error("rANS stream ends early");
    uint64_t zz = sym;
    if (sym == kEscape) {
      uint64_t extra = 0;
      if (!rans::get_varint(escape_bytes, &escape_at, &extra) || __builtin_add_overflow(extra, kEscape, &zz)) {
        return decode_error("bad escape");
      }
    }
    if (zz == 0) return decode_error("position " + std::to_string(p) + " listed with an unchanged value");
    if constexpr (W < 8) {
      if ((zz >> (8 * W)) != 0) return decode_error("value distance " + std::to_string(zz) + " wider than the element");
    }
    distances[checker.pending() - 1] = zz;
    if (checker.full()) DWS_RETURN_IF_ERROR(finish_batch());
  }
  DWS_RETURN_IF_ERROR(finish_batch());
  if (!dec.finished_cleanly()) return decode_error("rANS stream has leftover bytes or a wrong final state");
  if (!mantissas.finished_cleanly()) return decode_error("unused mantissa bits");
  if (escape_at != escape_bytes.size()) return decode_error("unused escape bytes");
  return Status::Ok();
}

}  // namespace

uint64_t to_key(DType dtype, uint64_t bits) {
  return dispatch(dtype, [&]<size_t W, bool kFloat>() { return key_of<W, kFloat>(bits); });
}

uint64_t from_key(DType dtype, uint64_t key) {
  return dispatch(dtype, [&]<size_t W, bool kFloat>() { return bits_of<W, kFloat>(key); });
}

Result<std::vector<std::byte>> encode(DType dtype, std::span<const std::byte> base, std::span<const std::byte> target,
                                      std::span<const uint64_t> positions) {
  const size_t n = positions.size();
  std::vector<uint32_t> gap_symbols(n), value_symbols(n);
  std::vector<uint64_t> gap_counts(kGapAlphabet, 0), value_counts(kValueAlphabet, 0);
  BitWriter mantissas;
  std::vector<std::byte> escapes;
  uint64_t prev = 0;
  // Value distances, with the element width and float-ness fixed at compile time.
  std::vector<uint64_t> distances(n);
  dispatch(dtype, [&]<size_t W, bool kFloat>() {
    for (size_t i = 0; i < n; ++i) {
      const uint64_t p = positions[i];
      const uint64_t kb = key_of<W, kFloat>(load<W>(base.data() + p * W));
      const uint64_t kt = key_of<W, kFloat>(load<W>(target.data() + p * W));
      distances[i] = zigzag(sign_extend((kt - kb) & kWidthMask<W>, W));
    }
    return 0;
  });
  for (size_t i = 0; i < n; ++i) {
    const uint64_t p = positions[i];
    const uint64_t gap = i == 0 ? p : p - prev - 1;
    prev = p;
    const uint32_t len = bit_length(gap);
    gap_symbols[i] = len;
    ++gap_counts[len];
    if (len >= 2) mantissas.put(gap, len - 1);  // the bits below the leading one
    const uint64_t zz = distances[i];
    if (zz >= kEscape) {
      value_symbols[i] = static_cast<uint32_t>(kEscape);
      rans::put_varint(escapes, zz - kEscape);
    } else {
      value_symbols[i] = static_cast<uint32_t>(zz);
    }
    ++value_counts[value_symbols[i]];
  }
  std::vector<std::byte> out;
  out.push_back(static_cast<std::byte>(kVersion));
  rans::put_varint(out, n);
  if (n == 0) return out;
  DWS_ASSIGN_OR_RETURN(rans::Model gap_model, rans::Model::from_counts(gap_counts));
  DWS_ASSIGN_OR_RETURN(rans::Model value_model, rans::Model::from_counts(value_counts));
  gap_model.serialize(out);
  value_model.serialize(out);
  rans::Encoder enc;
  for (size_t i = 0; i < n; ++i) {
    enc.push(gap_model, gap_symbols[i]);
    enc.push(value_model, value_symbols[i]);
  }
  put_section(out, enc.finish());
  put_section(out, mantissas.finish());
  put_section(out, escapes);
  return out;
}

Status decode(DType dtype, uint64_t numel, uint64_t changes, std::span<const std::byte> payload,
              std::span<const std::byte> base, const ChangeSink& sink) {
  const size_t w = dtype_size_bytes(dtype);
  if (base.size() != numel * w) return make_error(ErrorCode::kInternal, "native: base has the wrong size");
  size_t at = 0;
  if (payload.empty() || static_cast<uint8_t>(payload[0]) != kVersion) return decode_error("unknown payload version");
  at = 1;
  uint64_t n = 0;
  if (!rans::get_varint(payload, &at, &n)) return decode_error("truncated header");
  if (n != changes) {
    return make_error(ErrorCode::kPatchMetadata, "native payload holds " + std::to_string(n) + " changes, metadata says " +
                                                     std::to_string(changes));
  }
  DWS_ASSIGN_OR_RETURN(rans::Model gap_model, rans::Model::parse(payload, &at, kGapAlphabet));
  DWS_ASSIGN_OR_RETURN(rans::Model value_model, rans::Model::parse(payload, &at, kValueAlphabet));
  std::span<const std::byte> stream, mantissa_bytes, escape_bytes;
  if (!get_section(payload, &at, &stream) || !get_section(payload, &at, &mantissa_bytes) ||
      !get_section(payload, &at, &escape_bytes)) {
    return decode_error("truncated sections");
  }
  if (at != payload.size()) return decode_error(std::to_string(payload.size() - at) + " trailing bytes");
  DWS_ASSIGN_OR_RETURN(rans::Decoder dec, rans::Decoder::start(stream));
  return dispatch(dtype, [&]<size_t W, bool kFloat>() {
    return decode_symbols<W, kFloat>(dec, gap_model, value_model, mantissa_bytes, escape_bytes, n, numel, base, sink);
  });
}

}  // namespace dws::codec::native
