#include "codec/native.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <string>

#include "codec/change_sink.h"
#include "codec/element_key.h"
#include "codec/native_symbols.h"
#include "codec/rans.h"

namespace dws::codec::native {

namespace {

// Payload layouts (byte 0): how positions are coded. Values are coded the same way in all three.
constexpr uint8_t kLayoutGaps = static_cast<uint8_t>(Layout::kGaps);
constexpr uint8_t kLayoutClass = static_cast<uint8_t>(Layout::kClass);
constexpr uint8_t kLayoutBitmap = static_cast<uint8_t>(Layout::kBitmap);
constexpr uint32_t kGapAlphabet = 65;     // bit length of a gap: 0..64
constexpr uint32_t kValueAlphabet = 256;  // zigzag distance 0..254, 255 = escape
constexpr uint64_t kEscape = kEscapeSymbol;  // codec/native_symbols.h, as a 64-bit operand
constexpr uint32_t kMaxRiceParameter = 62;
// The bitmap layout is tried from this density on (below it, a bitmap costs more symbols than gaps).
constexpr double kBitmapMinDensity = 1.0 / 32;

Status decode_error(const std::string& msg) { return make_error(ErrorCode::kDecode, "native: " + msg); }

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

// Calls fn.template operator()<W, kFloat>() for the dtype's width and float-ness.
template <typename Fn>
auto dispatch(DType dtype, Fn&& fn) {
  const bool f = dtype_is_float(dtype);
  switch (dtype_size_bytes(dtype)) {
    case 1: return f ? fn.template operator()<1, true>() : fn.template operator()<1, false>();
    case 2: return f ? fn.template operator()<2, true>() : fn.template operator()<2, false>();
    case 4: return f ? fn.template operator()<4, true>() : fn.template operator()<4, false>();
    default: return f ? fn.template operator()<8, true>() : fn.template operator()<8, false>();
  }
}

class BitWriter {
 public:
  void put_unary(uint64_t q) {
    for (; q >= 32; q -= 32) put(0xFFFFFFFFull, 32);
    put((1ull << q) - 1, static_cast<uint32_t>(q) + 1);  // q ones, then a zero
  }
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
  // Reads a unary count (one-bits ended by a zero-bit); false when it would exceed `limit` or the input
  // runs out.
  bool get_unary(uint64_t limit, uint64_t* out) {
    uint64_t q = 0;
    for (;;) {
      if (pos_ >= total_bits()) return false;
      const uint64_t byte_index = pos_ / 8;
      const uint32_t bit_in_byte = static_cast<uint32_t>(pos_ % 8);
      const uint32_t byte = static_cast<uint32_t>(in_[byte_index]) >> bit_in_byte;
      const uint32_t avail = 8 - bit_in_byte;
      const uint32_t ones = std::min<uint32_t>(static_cast<uint32_t>(std::countr_one(byte)), avail);
      q += ones;
      if (q > limit) return false;
      pos_ += ones;
      if (ones < avail) {
        ++pos_;  // the terminating zero
        *out = q;
        return true;
      }
    }
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

// The escapes section: varints, in order.
void put_escapes(std::vector<std::byte>& out, std::span<const uint64_t> escapes) {
  std::vector<std::byte> section;
  for (uint64_t e : escapes) rans::put_varint(section, e);
  put_section(out, section);
}

bool get_section(std::span<const std::byte> in, size_t* at, std::span<const std::byte>* section) {
  uint64_t n = 0;
  if (!rans::get_varint(in, at, &n) || n > in.size() - *at) return false;
  *section = in.subspan(*at, n);
  *at += n;
  return true;
}

// The class of a float element for the class layout: its exponent field. count == 0: no classes.
struct ClassField {
  unsigned shift = 0;
  uint32_t count = 0;
};

ClassField class_field(DType d) {
  switch (d) {
    case DType::kBF16: return {7, 256};
    case DType::kF16: return {10, 32};
    case DType::kF32: return {23, 256};
    case DType::kF64: return {52, 2048};
    case DType::kF8_E4M3: return {3, 16};
    case DType::kF8_E5M2: return {2, 32};
    default: return {};
  }
}

// ---- encoding ----

// The value half of every layout: one symbol per change (zigzag ULP distance, 255 = escape).
struct ValueSymbols {
  std::vector<uint8_t> symbols;
  std::vector<uint64_t> counts = std::vector<uint64_t>(kValueAlphabet, 0);
  std::vector<uint64_t> escapes;  // z - 255 of every escaped change, in order
};

// base and target are whole tensors, read at positions[i]; or, when `compact`, the changed elements
// only, read at i.
ValueSymbols value_symbols(DType dtype, std::span<const std::byte> base, std::span<const std::byte> target,
                           std::span<const uint64_t> positions, bool compact) {
  ValueSymbols v;
  v.symbols.resize(positions.size());
  dispatch(dtype, [&]<size_t W, bool kFloat>() {
    for (size_t i = 0; i < positions.size(); ++i) {
      const uint64_t p = compact ? i : positions[i];
      const uint64_t zz = zigzag_key_distance<W, kFloat>(load<W>(base.data() + p * W), load<W>(target.data() + p * W));
      v.symbols[i] = static_cast<uint8_t>(std::min(zz, kEscape));
      if (zz >= kEscape) v.escapes.push_back(zz - kEscape);
      ++v.counts[v.symbols[i]];
    }
    return 0;
  });
  return v;
}

// Layout 1's position half: each gap's bit length (model G's symbol) and the mantissa section.
struct GapSymbols {
  std::vector<uint8_t> lengths;
  std::vector<std::byte> mantissas;
};

GapSymbols gap_symbols(std::span<const uint64_t> positions) {
  GapSymbols g;
  g.lengths.resize(positions.size());
  BitWriter mantissas;
  uint64_t prev = 0;
  for (size_t i = 0; i < positions.size(); ++i) {
    const uint64_t gap = i == 0 ? positions[i] : positions[i] - prev - 1;
    prev = positions[i];
    const uint32_t len = gap_bit_length(gap);
    g.lengths[i] = static_cast<uint8_t>(len);
    if (len >= 2) mantissas.put(gap, gap_mantissa_bits(len));  // the bits below the leading one
  }
  g.mantissas = mantissas.finish();
  return g;
}

Result<std::vector<std::byte>> encode_gaps(std::span<const uint8_t> gap_lengths, std::span<const std::byte> mantissas,
                                           const ValueSymbols& values, const rans::Model& value_model) {
  const size_t n = gap_lengths.size();
  std::vector<uint64_t> gap_counts(kGapAlphabet, 0);
  for (uint8_t len : gap_lengths) ++gap_counts[len];
  DWS_ASSIGN_OR_RETURN(rans::Model gap_model, rans::Model::from_counts(gap_counts));
  std::vector<std::byte> out;
  out.push_back(static_cast<std::byte>(kLayoutGaps));
  rans::put_varint(out, n);
  gap_model.serialize(out);
  value_model.serialize(out);
  rans::Encoder enc;
  for (size_t i = 0; i < n; ++i) {
    enc.push(gap_model, gap_lengths[i]);
    enc.push(value_model, values.symbols[i]);
  }
  put_section(out, enc.finish());
  rans::put_varint(out, mantissas.size());
  out.insert(out.end(), mantissas.begin(), mantissas.end());
  put_escapes(out, values.escapes);
  return out;
}

Result<std::vector<std::byte>> encode_bitmap(uint64_t numel, std::span<const uint64_t> positions,
                                             const ValueSymbols& values, const rans::Model& value_model) {
  std::vector<uint8_t> bitmap((numel + 7) / 8, 0);
  for (uint64_t p : positions) bitmap[p / 8] = static_cast<uint8_t>(bitmap[p / 8] | (1u << (p % 8)));
  std::vector<uint64_t> byte_counts(256, 0);
  for (uint8_t b : bitmap) ++byte_counts[b];
  DWS_ASSIGN_OR_RETURN(rans::Model byte_model, rans::Model::from_counts(byte_counts));
  std::vector<std::byte> out;
  out.push_back(static_cast<std::byte>(kLayoutBitmap));
  rans::put_varint(out, positions.size());
  byte_model.serialize(out);
  value_model.serialize(out);
  rans::Encoder enc;
  for (uint8_t b : bitmap) enc.push(byte_model, b);
  for (uint8_t s : values.symbols) enc.push(value_model, s);
  put_section(out, enc.finish());
  put_escapes(out, values.escapes);
  return out;
}

uint64_t rice_cost_bits(std::span<const uint64_t> gaps, uint32_t k) {
  uint64_t bits = 0;
  for (uint64_t g : gaps) bits += (g >> k) + 1 + k;
  return bits;
}

// The Rice parameter with the fewest bits, searched around log2 of the mean gap.
uint32_t best_rice_parameter(std::span<const uint64_t> gaps) {
  long double sum = 0;
  for (uint64_t g : gaps) sum += static_cast<long double>(g);
  const uint64_t mean = static_cast<uint64_t>(sum / static_cast<long double>(gaps.size()));
  const uint32_t b = gap_bit_length(mean);
  uint32_t best = 0;
  uint64_t best_bits = ~0ull;
  for (uint32_t k = b > 2 ? b - 2 : 0; k <= std::min(b + 1, kMaxRiceParameter); ++k) {
    const uint64_t bits = rice_cost_bits(gaps, k);
    if (bits < best_bits) {
      best_bits = bits;
      best = k;
    }
  }
  return best;
}

Result<std::vector<std::byte>> encode_class(DType dtype, std::span<const std::byte> base,
                                            std::span<const uint64_t> positions, const ValueSymbols& values,
                                            const rans::Model& value_model) {
  const ClassField field = class_field(dtype);
  const size_t n = positions.size();
  constexpr uint32_t kNone = ~0u;
  std::vector<uint32_t> slot_of_class(field.count, kNone);
  std::vector<uint32_t> class_of_slot;
  std::vector<uint64_t> gaps(n);       // class-local gap before each change
  std::vector<uint32_t> slot_of(n);    // each change's class slot
  dispatch(dtype, [&]<size_t W, bool kFloat>() {
    const uint64_t mask = field.count - 1;
    for (size_t j = 0; j < n; ++j) {
      const uint32_t c = static_cast<uint32_t>((load<W>(base.data() + positions[j] * W) >> field.shift) & mask);
      if (slot_of_class[c] == kNone) slot_of_class[c] = 0;  // mark active; slots assigned in class order below
      slot_of[j] = c;
    }
    for (uint32_t c = 0; c < field.count; ++c) {
      if (slot_of_class[c] != kNone) {
        slot_of_class[c] = static_cast<uint32_t>(class_of_slot.size());
        class_of_slot.push_back(c);
      }
    }
    for (size_t j = 0; j < n; ++j) slot_of[j] = slot_of_class[slot_of[j]];
    // One scan up to the last change: unchanged members of each active class since its last change.
    std::vector<uint64_t> since(class_of_slot.size(), 0);
    size_t j = 0;
    for (uint64_t i = 0; j < n; ++i) {
      const uint32_t s = slot_of_class[(load<W>(base.data() + i * W) >> field.shift) & mask];
      if (s == kNone) continue;
      if (i == positions[j]) {
        gaps[j] = since[s];
        since[s] = 0;
        ++j;
      } else {
        ++since[s];
      }
    }
    return 0;
  });
  const size_t classes = class_of_slot.size();
  std::vector<std::vector<uint64_t>> class_gaps(classes);
  for (size_t j = 0; j < n; ++j) class_gaps[slot_of[j]].push_back(gaps[j]);
  std::vector<uint32_t> rice(classes);
  for (size_t s = 0; s < classes; ++s) rice[s] = best_rice_parameter(class_gaps[s]);
  // Bit order: every class's first gap (in class order), then, at each change in position order, the
  // gap to the next change of the same class, if it has one.
  BitWriter bits;
  auto put_rice = [&](uint64_t g, uint32_t k) {
    bits.put_unary(g >> k);
    bits.put(g, k);
  };
  for (size_t s = 0; s < classes; ++s) put_rice(class_gaps[s][0], rice[s]);
  std::vector<size_t> next_index(classes, 1);
  for (size_t j = 0; j < n; ++j) {
    const uint32_t s = slot_of[j];
    if (next_index[s] < class_gaps[s].size()) put_rice(class_gaps[s][next_index[s]++], rice[s]);
  }
  std::vector<std::byte> out;
  out.push_back(static_cast<std::byte>(kLayoutClass));
  rans::put_varint(out, n);
  // The classes from the first to the last active one, each as varint(count << 6 | rice); inactive
  // classes inside the span are a 0.
  const uint32_t first = class_of_slot.front(), span = class_of_slot.back() - first + 1;
  rans::put_varint(out, first);
  rans::put_varint(out, span);
  for (uint32_t c = first, s = 0; c < first + span; ++c) {
    if (s < classes && class_of_slot[s] == c) {
      rans::put_varint(out, (static_cast<uint64_t>(class_gaps[s].size()) << 6) | rice[s]);
      ++s;
    } else {
      rans::put_varint(out, 0);
    }
  }
  value_model.serialize(out);
  rans::Encoder enc;
  for (uint8_t s : values.symbols) enc.push(value_model, s);
  put_section(out, enc.finish());
  put_section(out, bits.finish());
  put_escapes(out, values.escapes);
  return out;
}

// ---- decoding ----

// The value half of every layout: takes each decoded position with its value symbol, reconstructs the
// new value from the base and hands validated batches to the sink.
template <size_t W, bool kFloat>
class ValueDecoder {
 public:
  // operands: hand the sink each change's zigzag key distance (8 bytes, ChangeOp::kAddKey) instead of the
  // new value; `base` is then unused.
  ValueDecoder(uint64_t numel, uint64_t n, std::span<const std::byte> base, std::span<const std::byte> escapes,
               const ChangeSink& sink, bool operands)
      : base_(base), escapes_(escapes), checker_(numel, sink, operands ? sizeof(uint64_t) : W, n), operands_(operands) {
    const size_t batch = static_cast<size_t>(std::min<uint64_t>(n, kSinkBatch));
    values_.resize(batch * W);
    distances_.resize(batch);
  }

  Status take(uint64_t p, uint32_t sym) {
    DWS_RETURN_IF_ERROR(checker_.push(p));
    uint64_t zz = sym;
    if (sym == kEscape) {
      uint64_t extra = 0;
      if (!rans::get_varint(escapes_, &escape_at_, &extra) || __builtin_add_overflow(extra, kEscape, &zz)) {
        return decode_error("bad escape");
      }
    }
    if (zz == 0) return decode_error("position " + std::to_string(p) + " listed with an unchanged value");
    if constexpr (W < 8) {
      if ((zz >> (8 * W)) != 0) return decode_error("value distance " + std::to_string(zz) + " wider than the element");
    }
    distances_[checker_.pending() - 1] = zz;
    if (checker_.full()) return flush();
    return Status::Ok();
  }

  Status finish() {
    DWS_RETURN_IF_ERROR(flush());
    if (escape_at_ != escapes_.size()) return decode_error("unused escape bytes");
    return Status::Ok();
  }

 private:
  // The symbol decode is a serial dependency chain, so reading the base inside it would serialize one
  // cache miss per change on models larger than the cache. The base is read here, per batch, in a loop
  // of independent loads that the CPU overlaps.
  Status flush() {
    const std::span<const uint64_t> pos = checker_.pending_positions();
    if (operands_) return checker_.flush(std::as_bytes(std::span<const uint64_t>(distances_)));
    for (size_t k = 0; k < pos.size(); ++k) {
      store<W>(values_.data() + k * W, add_key_distance<W, kFloat>(load<W>(base_.data() + pos[k] * W), distances_[k]));
    }
    return checker_.flush(values_);
  }

  std::span<const std::byte> base_;
  std::span<const std::byte> escapes_;
  size_t escape_at_ = 0;
  PositionChecker checker_;
  bool operands_;
  std::vector<std::byte> values_;
  std::vector<uint64_t> distances_;
};

Status rans_ended(const rans::Decoder& dec) {
  if (!dec.finished_cleanly()) return decode_error("rANS stream has leftover bytes or a wrong final state");
  return Status::Ok();
}

template <size_t W, bool kFloat>
Status decode_gaps(std::span<const std::byte> payload, size_t at, uint64_t n, uint64_t numel,
                   std::span<const std::byte> base, const ChangeSink& sink, bool operands) {
  DWS_ASSIGN_OR_RETURN(rans::Model gap_model, rans::Model::parse(payload, &at, kGapAlphabet));
  DWS_ASSIGN_OR_RETURN(rans::Model value_model, rans::Model::parse(payload, &at, kValueAlphabet));
  std::span<const std::byte> stream, mantissa_bytes, escapes;
  if (!get_section(payload, &at, &stream) || !get_section(payload, &at, &mantissa_bytes) ||
      !get_section(payload, &at, &escapes)) {
    return decode_error("truncated sections");
  }
  if (at != payload.size()) return decode_error(std::to_string(payload.size() - at) + " trailing bytes");
  DWS_ASSIGN_OR_RETURN(rans::Decoder dec, rans::Decoder::start(stream));
  BitReader mantissas(mantissa_bytes);
  ValueDecoder<W, kFloat> values(numel, n, base, escapes, sink, operands);
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
    prev = p;
    uint32_t sym = 0;
    if (!dec.next(value_model, &sym)) return decode_error("rANS stream ends early");
    DWS_RETURN_IF_ERROR(values.take(p, sym));
  }
  DWS_RETURN_IF_ERROR(values.finish());
  DWS_RETURN_IF_ERROR(rans_ended(dec));
  if (!mantissas.finished_cleanly()) return decode_error("unused mantissa bits");
  return Status::Ok();
}

template <size_t W, bool kFloat>
Status decode_bitmap(std::span<const std::byte> payload, size_t at, uint64_t n, uint64_t numel,
                     std::span<const std::byte> base, const ChangeSink& sink, bool operands) {
  DWS_ASSIGN_OR_RETURN(rans::Model byte_model, rans::Model::parse(payload, &at, 256));
  DWS_ASSIGN_OR_RETURN(rans::Model value_model, rans::Model::parse(payload, &at, kValueAlphabet));
  std::span<const std::byte> stream, escapes;
  if (!get_section(payload, &at, &stream) || !get_section(payload, &at, &escapes)) {
    return decode_error("truncated sections");
  }
  if (at != payload.size()) return decode_error(std::to_string(payload.size() - at) + " trailing bytes");
  DWS_ASSIGN_OR_RETURN(rans::Decoder dec, rans::Decoder::start(stream));
  // The bitmap is as large as the tensor's element count in bits: bounded by the base the caller holds.
  const uint64_t words = (numel + 63) / 64;
  std::vector<uint64_t> bitmap(words, 0);
  uint64_t set = 0;
  for (uint64_t b = 0; b < (numel + 7) / 8; ++b) {
    uint32_t byte = 0;
    if (!dec.next(byte_model, &byte)) return decode_error("rANS stream ends early");
    bitmap[b / 8] |= static_cast<uint64_t>(byte) << (8 * (b % 8));
    set += static_cast<uint64_t>(std::popcount(byte));
  }
  if (numel % 64 != 0 && (bitmap.back() >> (numel % 64)) != 0) return decode_error("bitmap sets bits past the tensor's end");
  if (set != n) return decode_error("bitmap holds " + std::to_string(set) + " changes, the header " + std::to_string(n));
  ValueDecoder<W, kFloat> values(numel, n, base, escapes, sink, operands);
  for (uint64_t w = 0; w < words; ++w) {
    for (uint64_t bits = bitmap[w]; bits != 0; bits &= bits - 1) {
      uint32_t sym = 0;
      if (!dec.next(value_model, &sym)) return decode_error("rANS stream ends early");
      DWS_RETURN_IF_ERROR(values.take(64 * w + static_cast<uint64_t>(std::countr_zero(bits)), sym));
    }
  }
  DWS_RETURN_IF_ERROR(values.finish());
  return rans_ended(dec);
}

template <size_t W, bool kFloat>
Status decode_class(DType dtype, std::span<const std::byte> payload, size_t at, uint64_t n, uint64_t numel,
                    std::span<const std::byte> base, const ChangeSink& sink) {
  const ClassField field = class_field(dtype);
  if (field.count == 0) return decode_error("the class layout needs a float dtype, not " + std::string(dtype_name(dtype)));
  uint64_t first = 0, span = 0;
  if (!rans::get_varint(payload, &at, &first) || !rans::get_varint(payload, &at, &span) || span == 0 ||
      first >= field.count || span > field.count - first) {
    return decode_error("bad class span");
  }
  constexpr uint32_t kNone = ~0u;
  std::vector<uint32_t> slot_of_class(field.count, kNone);
  std::vector<uint32_t> class_of_slot, rice;
  std::vector<uint64_t> left;  // changes of each class not yet found
  uint64_t total = 0;
  for (uint64_t c = first; c < first + span; ++c) {
    uint64_t v = 0;
    if (!rans::get_varint(payload, &at, &v)) return decode_error("truncated class list");
    const uint64_t count = v >> 6;
    const uint32_t k = static_cast<uint32_t>(v & 63);
    if (count == 0) {
      if (k != 0) return decode_error("inactive class with a Rice parameter");
      continue;
    }
    if (k > kMaxRiceParameter) return decode_error("Rice parameter " + std::to_string(k) + " above 62");
    if (count > n - total) return decode_error("class change counts exceed " + std::to_string(n));
    total += count;
    slot_of_class[c] = static_cast<uint32_t>(class_of_slot.size());
    class_of_slot.push_back(static_cast<uint32_t>(c));
    rice.push_back(k);
    left.push_back(count);
  }
  const size_t classes = class_of_slot.size();
  if (total != n) return decode_error("class change counts sum to " + std::to_string(total) + ", not " + std::to_string(n));
  DWS_ASSIGN_OR_RETURN(rans::Model value_model, rans::Model::parse(payload, &at, kValueAlphabet));
  std::span<const std::byte> stream, rice_bytes, escapes;
  if (!get_section(payload, &at, &stream) || !get_section(payload, &at, &rice_bytes) ||
      !get_section(payload, &at, &escapes)) {
    return decode_error("truncated sections");
  }
  if (at != payload.size()) return decode_error(std::to_string(payload.size() - at) + " trailing bytes");
  DWS_ASSIGN_OR_RETURN(rans::Decoder dec, rans::Decoder::start(stream));
  BitReader bits(rice_bytes);
  auto get_rice = [&](uint32_t k, uint64_t* g) -> bool {
    uint64_t q = 0, low = 0;
    if (!bits.get_unary(numel >> k, &q) || !bits.get(k, &low)) return false;
    *g = (q << k) | low;
    return true;
  };
  std::vector<uint64_t> skip(classes);  // unchanged members of each class before its next change
  for (uint64_t s = 0; s < classes; ++s) {
    if (!get_rice(rice[s], &skip[s])) return decode_error("Rice bits run out or a gap exceeds the tensor");
  }
  ValueDecoder<W, kFloat> values(numel, n, base, escapes, sink, false);
  const uint64_t mask = field.count - 1;
  uint64_t found = 0;
  // One scan of the base in position order; it stops after the last change. Inactive (and finished)
  // classes map to a dummy slot whose skip count never runs out, so the loop has one rarely-taken branch.
  const uint32_t dummy = static_cast<uint32_t>(classes);
  skip.push_back(~0ull);
  for (auto& slot : slot_of_class) {
    if (slot == kNone) slot = dummy;
  }
  for (uint64_t i = 0; i < numel && found < n; ++i) {
    const uint32_t s = slot_of_class[(load<W>(base.data() + i * W) >> field.shift) & mask];
    if (skip[s] != 0) [[likely]] {
      --skip[s];
      continue;
    }
    uint32_t sym = 0;
    if (!dec.next(value_model, &sym)) return decode_error("rANS stream ends early");
    DWS_RETURN_IF_ERROR(values.take(i, sym));
    ++found;
    if (--left[s] == 0) {
      slot_of_class[class_of_slot[s]] = dummy;  // class done: its members are skipped
    } else if (!get_rice(rice[s], &skip[s])) {
      return decode_error("Rice bits run out or a gap exceeds the tensor");
    }
  }
  if (found != n) {
    return make_error(ErrorCode::kPositions, "native: class gaps run past the tensor's end (" + std::to_string(found) +
                                                 " of " + std::to_string(n) + " changes found)");
  }
  DWS_RETURN_IF_ERROR(values.finish());
  DWS_RETURN_IF_ERROR(rans_ended(dec));
  if (!bits.finished_cleanly()) return decode_error("unused Rice bits");
  return Status::Ok();
}

}  // namespace

uint64_t to_key(DType dtype, uint64_t bits) {
  return dispatch(dtype, [&]<size_t W, bool kFloat>() { return key_of<W, kFloat>(bits); });
}

uint64_t from_key(DType dtype, uint64_t key) {
  return dispatch(dtype, [&]<size_t W, bool kFloat>() { return bits_of<W, kFloat>(key); });
}

uint64_t add_key_distance(DType dtype, uint64_t bits, uint64_t zigzag_distance) {
  return dispatch(dtype, [&]<size_t W, bool kFloat>() { return add_key_distance<W, kFloat>(bits, zigzag_distance); });
}

bool has_class_layout(DType dtype) { return class_field(dtype).count != 0; }

namespace {

// `base` is the whole base tensor, or empty when only the changed elements are known (no class layout);
// `gaps` are layout 1's symbols of `positions`.
Result<std::vector<std::byte>> encode_best(DType dtype, uint64_t numel, std::span<const std::byte> base,
                                           std::span<const uint64_t> positions, std::span<const uint8_t> gap_lengths,
                                           std::span<const std::byte> mantissas, const ValueSymbols& values,
                                           const Options& options) {
  const size_t n = positions.size();
  DWS_ASSIGN_OR_RETURN(rans::Model value_model, rans::Model::from_counts(values.counts));
  if (options.only) {
    switch (*options.only) {
      case Layout::kGaps: return encode_gaps(gap_lengths, mantissas, values, value_model);
      case Layout::kBitmap: return encode_bitmap(numel, positions, values, value_model);
      case Layout::kClass:
        if (!has_class_layout(dtype) || base.empty()) {
          return make_error(ErrorCode::kInvalidArgument, "native: no class layout for " + std::string(dtype_name(dtype)));
        }
        return encode_class(dtype, base, positions, values, value_model);
    }
  }
  DWS_ASSIGN_OR_RETURN(std::vector<std::byte> best, encode_gaps(gap_lengths, mantissas, values, value_model));
  auto keep_smaller = [&](Result<std::vector<std::byte>> other) -> Status {
    if (!other.ok()) return other.status();
    if (other->size() < best.size()) best = std::move(*other);
    return Status::Ok();
  };
  const double density = static_cast<double>(n) / static_cast<double>(numel);
  if (density >= kBitmapMinDensity) {
    DWS_ASSIGN_OR_RETURN(std::vector<std::byte> bitmap, encode_bitmap(numel, positions, values, value_model));
    const double margin = density >= kBitmapPreferredDensity ? kBitmapSizeMargin : 1.0;
    if (static_cast<double>(bitmap.size()) <= margin * static_cast<double>(best.size())) best = std::move(bitmap);
  }
  if (options.class_positions && has_class_layout(dtype) && !base.empty()) {
    DWS_RETURN_IF_ERROR(keep_smaller(encode_class(dtype, base, positions, values, value_model)));
  }
  return best;
}

std::vector<std::byte> empty_payload() {
  std::vector<std::byte> out{static_cast<std::byte>(kLayoutGaps)};
  rans::put_varint(out, 0);
  return out;
}

Status check_value_sizes(DType dtype, std::span<const uint64_t> positions, std::span<const std::byte> base_values,
                         std::span<const std::byte> target_values) {
  const size_t w = dtype_size_bytes(dtype);
  if (base_values.size() != positions.size() * w || target_values.size() != positions.size() * w) {
    return make_error(ErrorCode::kInvalidArgument, "native: " + std::to_string(positions.size()) + " positions need " +
                                                       std::to_string(positions.size() * w) + " bytes of base and target values each, got " +
                                                       std::to_string(base_values.size()) + " and " + std::to_string(target_values.size()));
  }
  return Status::Ok();
}

Status invalid_symbols(const std::string& msg) { return make_error(ErrorCode::kInvalidArgument, "native symbols: " + msg); }

}  // namespace

Result<std::vector<std::byte>> encode(DType dtype, std::span<const std::byte> base, std::span<const std::byte> target,
                                      std::span<const uint64_t> positions, const Options& options) {
  if (positions.empty()) return empty_payload();
  const uint64_t numel = base.size() / dtype_size_bytes(dtype);
  const GapSymbols gaps = gap_symbols(positions);
  return encode_best(dtype, numel, base, positions, gaps.lengths, gaps.mantissas,
                     value_symbols(dtype, base, target, positions, false), options);
}

Result<std::vector<std::byte>> encode_changes(DType dtype, uint64_t numel, std::span<const uint64_t> positions,
                                              std::span<const std::byte> base_values, std::span<const std::byte> target_values) {
  DWS_RETURN_IF_ERROR(check_value_sizes(dtype, positions, base_values, target_values));
  if (positions.empty()) return empty_payload();
  const GapSymbols gaps = gap_symbols(positions);
  return encode_best(dtype, numel, {}, positions, gaps.lengths, gaps.mantissas,
                     value_symbols(dtype, base_values, target_values, positions, true), {});
}

Result<ChangeSymbols> symbolize_changes(DType dtype, uint64_t numel, std::span<const uint64_t> positions,
                                        std::span<const std::byte> base_values, std::span<const std::byte> target_values) {
  DWS_RETURN_IF_ERROR(check_value_sizes(dtype, positions, base_values, target_values));
  for (size_t i = 0; i < positions.size(); ++i) {
    if (positions[i] >= numel || (i > 0 && positions[i] <= positions[i - 1])) {
      return make_error(ErrorCode::kInvalidArgument, "native: position " + std::to_string(positions[i]) + " (change " + std::to_string(i) +
                                                         ") is not ascending within " + std::to_string(numel) + " elements");
    }
  }
  GapSymbols gaps = gap_symbols(positions);
  ValueSymbols values = value_symbols(dtype, base_values, target_values, positions, true);
  return ChangeSymbols{std::move(gaps.lengths), std::move(values.symbols), std::move(gaps.mantissas), std::move(values.escapes)};
}

Result<std::vector<std::byte>> encode_symbols(DType dtype, uint64_t numel, const ChangeSymbols& symbols) {
  const size_t n = symbols.values.size();
  if (symbols.gap_lengths.size() != n) {
    return invalid_symbols(std::to_string(n) + " value symbols but " + std::to_string(symbols.gap_lengths.size()) + " gap lengths");
  }
  if (n == 0) {
    if (!symbols.mantissas.empty() || !symbols.escapes.empty()) return invalid_symbols("no changes, but mantissas or escapes");
    return empty_payload();
  }
  // The positions, from the gaps: checks lengths, the use of every mantissa bit, order and range.
  std::vector<uint64_t> positions(n);
  BitReader reader(symbols.mantissas);
  uint64_t next = 0;  // the smallest position the next change may have
  for (size_t i = 0; i < n; ++i) {
    const uint32_t len = symbols.gap_lengths[i];
    if (len > 64) return invalid_symbols("change " + std::to_string(i) + " has gap length " + std::to_string(len) + " > 64");
    uint64_t gap = len == 0 ? 0 : 1;
    if (len >= 2) {
      uint64_t low = 0;
      if (!reader.get(gap_mantissa_bits(len), &low)) {
        return invalid_symbols("the mantissa section (" + std::to_string(symbols.mantissas.size()) + " bytes) ends at change " + std::to_string(i));
      }
      gap = (1ull << (len - 1)) | low;
    }
    if (next >= numel || gap >= numel - next) {
      return invalid_symbols("change " + std::to_string(i) + " is past the tensor's " + std::to_string(numel) + " elements");
    }
    positions[i] = next + gap;
    next = positions[i] + 1;
  }
  if (!reader.finished_cleanly()) {
    return invalid_symbols("the mantissa section (" + std::to_string(symbols.mantissas.size()) + " bytes) has bits the gaps do not use");
  }
  ValueSymbols values{symbols.values, std::vector<uint64_t>(kValueAlphabet, 0), symbols.escapes};
  const size_t w = dtype_size_bytes(dtype);
  const uint64_t max_z = kWidthMask<8> >> (64 - 8 * w);  // 2^(8w) - 1
  size_t e = 0;
  for (size_t i = 0; i < n; ++i) {
    const uint8_t sym = symbols.values[i];
    if (sym == 0) return invalid_symbols("change " + std::to_string(i) + " has value symbol 0 (its value did not change)");
    ++values.counts[sym];
    if (sym != kEscape) continue;
    if (e == symbols.escapes.size()) return invalid_symbols("more escaped values than the " + std::to_string(e) + " escapes");
    if (symbols.escapes[e] > max_z - kEscape) {
      return invalid_symbols("escape " + std::to_string(e) + " (" + std::to_string(symbols.escapes[e]) + ") is past " +
                             std::string(dtype_name(dtype)) + "'s largest distance");
    }
    ++e;
  }
  if (e != symbols.escapes.size()) {
    return invalid_symbols(std::to_string(symbols.escapes.size()) + " escapes for " + std::to_string(e) + " escaped values");
  }
  return encode_best(dtype, numel, {}, positions, symbols.gap_lengths, symbols.mantissas, values, {});
}

namespace {

// operands: see decode_operands; `base` is then empty.
Status decode_impl(DType dtype, uint64_t numel, uint64_t changes, std::span<const std::byte> payload,
                   std::span<const std::byte> base, const ChangeSink& sink, bool operands) {
  if (payload.empty()) return decode_error("empty payload");
  const uint8_t layout = static_cast<uint8_t>(payload[0]);
  if (layout != kLayoutGaps && layout != kLayoutClass && layout != kLayoutBitmap) {
    return decode_error("unknown payload layout " + std::to_string(layout));
  }
  size_t at = 1;
  uint64_t n = 0;
  if (!rans::get_varint(payload, &at, &n)) return decode_error("truncated header");
  if (n != changes) {
    return make_error(ErrorCode::kPatchMetadata, "native payload holds " + std::to_string(n) + " changes, metadata says " +
                                                     std::to_string(changes));
  }
  if (n == 0) {
    if (layout != kLayoutGaps || at != payload.size()) return decode_error("an empty payload is layout 1 with nothing after n");
    return Status::Ok();
  }
  if (operands && layout == kLayoutClass) {
    return make_error(ErrorCode::kUnsupported,
                      "native: the class layout finds positions by scanning the base, which the decoder does not hold here");
  }
  return dispatch(dtype, [&]<size_t W, bool kFloat>() -> Status {
    switch (layout) {
      case kLayoutGaps: return decode_gaps<W, kFloat>(payload, at, n, numel, base, sink, operands);
      case kLayoutBitmap: return decode_bitmap<W, kFloat>(payload, at, n, numel, base, sink, operands);
      default: return decode_class<W, kFloat>(dtype, payload, at, n, numel, base, sink);
    }
  });
}

}  // namespace

Status decode(DType dtype, uint64_t numel, uint64_t changes, std::span<const std::byte> payload,
              std::span<const std::byte> base, const ChangeSink& sink) {
  const size_t w = dtype_size_bytes(dtype);
  if (base.size() != numel * w) return make_error(ErrorCode::kInternal, "native: base has the wrong size");
  return decode_impl(dtype, numel, changes, payload, base, sink, false);
}

Status decode_operands(DType dtype, uint64_t numel, uint64_t changes, std::span<const std::byte> payload,
                       const ChangeSink& sink) {
  return decode_impl(dtype, numel, changes, payload, {}, sink, true);
}

}  // namespace dws::codec::native
