#include "codec/rans.h"

#include <algorithm>
#include <string>

namespace dws::rans {

void put_varint(std::vector<std::byte>& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<std::byte>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<std::byte>(v));
}

bool get_varint(std::span<const std::byte> in, size_t* at, uint64_t* v) {
  uint64_t out = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (*at >= in.size()) return false;
    const uint64_t b = static_cast<uint64_t>(in[(*at)++]);
    if (shift == 63 && (b & 0x7E) != 0) return false;  // would overflow 64 bits
    out |= (b & 0x7F) << shift;
    if (!(b & 0x80)) {
      *v = out;
      return true;
    }
  }
  return false;
}

namespace {
Status decode_error(const std::string& msg) { return make_error(ErrorCode::kDecode, "rans: " + msg); }

void build_tables(Model& m) {
  m.start.assign(m.freq.size(), 0);
  m.slot_to_symbol.assign(kProbScale, 0);
  uint32_t c = 0;
  for (size_t s = 0; s < m.freq.size(); ++s) {
    m.start[s] = static_cast<uint16_t>(c);
    std::fill_n(m.slot_to_symbol.begin() + c, m.freq[s], static_cast<uint8_t>(s));
    c += m.freq[s];
  }
}
}  // namespace

Result<Model> Model::from_counts(std::span<const uint64_t> counts) {
  if (counts.empty() || counts.size() > 256) return make_error(ErrorCode::kInternal, "rans: alphabet size out of range");
  uint64_t total = 0;
  for (uint64_t c : counts) total += c;
  if (total == 0) return make_error(ErrorCode::kInternal, "rans: no symbols");
  Model m;
  m.freq.assign(counts.size(), 0);
  uint32_t sum = 0;
  size_t largest = 0;
  for (size_t s = 0; s < counts.size(); ++s) {
    if (counts[s] == 0) continue;
    const double scaled = static_cast<double>(counts[s]) * kProbScale / static_cast<double>(total);
    m.freq[s] = static_cast<uint16_t>(std::max<double>(1.0, std::min<double>(scaled + 0.5, kProbScale)));
    sum += m.freq[s];
    if (counts[s] > counts[largest]) largest = s;
  }
  // Fix the sum: take from (or give to) the symbols with the most room, largest first.
  while (sum != kProbScale) {
    if (sum < kProbScale) {
      m.freq[largest] = static_cast<uint16_t>(m.freq[largest] + (kProbScale - sum));
      sum = kProbScale;
    } else {
      size_t best = largest;
      for (size_t s = 0; s < m.freq.size(); ++s) if (m.freq[s] > m.freq[best]) best = s;
      const uint32_t take = std::min<uint32_t>(sum - kProbScale, m.freq[best] - 1u);
      m.freq[best] = static_cast<uint16_t>(m.freq[best] - take);
      sum -= take;
    }
  }
  build_tables(m);
  return m;
}

void Model::serialize(std::vector<std::byte>& out) const {
  uint64_t present = 0;
  for (uint16_t f : freq) present += f ? 1 : 0;
  put_varint(out, present);
  for (size_t s = 0; s < freq.size(); ++s) {
    if (!freq[s]) continue;
    out.push_back(static_cast<std::byte>(s));
    put_varint(out, freq[s]);
  }
}

Result<Model> Model::parse(std::span<const std::byte> in, size_t* consumed, uint32_t alphabet_size) {
  size_t at = *consumed;
  uint64_t present = 0;
  if (!get_varint(in, &at, &present) || present == 0 || present > alphabet_size) return decode_error("bad symbol count");
  Model m;
  m.freq.assign(alphabet_size, 0);
  uint64_t sum = 0;
  int last = -1;
  for (uint64_t i = 0; i < present; ++i) {
    if (at >= in.size()) return decode_error("truncated model");
    const int s = static_cast<int>(in[at++]);
    uint64_t f = 0;
    if (s >= static_cast<int>(alphabet_size) || s <= last || !get_varint(in, &at, &f) || f == 0 || f > kProbScale) {
      return decode_error("bad model entry");
    }
    m.freq[static_cast<size_t>(s)] = static_cast<uint16_t>(f);
    sum += f;
    last = s;
  }
  if (sum != kProbScale) return decode_error("model frequencies sum to " + std::to_string(sum));
  build_tables(m);
  *consumed = at;
  return m;
}

std::vector<std::byte> Encoder::finish() {
  std::vector<std::byte> rev;  // bytes in reverse order of the final stream
  rev.reserve(symbols_.size() / 2 + 8);
  uint32_t x = kLow;
  for (size_t i = symbols_.size(); i-- > 0;) {
    const Model& m = *symbols_[i].model;
    const uint32_t f = m.freq[symbols_[i].symbol];
    const uint32_t c = m.start[symbols_[i].symbol];
    const uint32_t x_max = ((kLow >> kProbBits) << 8) * f;
    while (x >= x_max) {
      rev.push_back(static_cast<std::byte>(x & 0xFF));
      x >>= 8;
    }
    x = ((x / f) << kProbBits) + (x % f) + c;
  }
  for (int k = 0; k < 4; ++k) {
    rev.push_back(static_cast<std::byte>(x & 0xFF));
    x >>= 8;
  }
  symbols_.clear();
  return {rev.rbegin(), rev.rend()};
}

Result<Decoder> Decoder::start(std::span<const std::byte> stream) {
  if (stream.size() < 4) return decode_error("stream shorter than its state");
  Decoder d;
  d.stream_ = stream;
  // The encoder emitted the final state low byte first into a reversed buffer: it reads big-endian here.
  for (int k = 0; k < 4; ++k) d.state_ = (d.state_ << 8) | static_cast<uint32_t>(stream[d.at_++]);
  if (d.state_ < kLow) return decode_error("initial state below the lower bound");
  return d;
}

}  // namespace dws::rans
