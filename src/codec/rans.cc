#include "codec/rans.h"

#include <algorithm>
#include <cmath>
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

// 2^(k/8) * 2^16 for k = 0..7, rounded: weights of quantized frequency codes, exact integers so that
// encoder and decoder build bit-identical models on any machine.
constexpr uint64_t kEighthPowers[8] = {65536, 71468, 77936, 84990, 92682, 101070, 110218, 120194};

uint64_t weight_of_code(uint8_t code) { return kEighthPowers[code % 8] << (code / 8); }

// Frequencies summing to kProbScale from positive weights, integer arithmetic only; every present
// symbol keeps a frequency of at least 1.
Model model_from_weights(std::span<const uint64_t> weights) {
  Model m;
  m.freq.assign(weights.size(), 0);
  // Weights are below 2^42 (codes up to kMaxCode) and there are at most 256: no product below overflows.
  uint64_t total = 0;
  for (uint64_t w : weights) total += w;
  uint32_t sum = 0;
  size_t largest = 0;
  for (size_t s = 0; s < weights.size(); ++s) {
    if (weights[s] == 0) continue;
    const uint64_t scaled = (weights[s] * kProbScale + total / 2) / total;
    m.freq[s] = static_cast<uint16_t>(std::clamp<uint64_t>(scaled, 1, kProbScale));
    sum += m.freq[s];
    if (weights[s] > weights[largest]) largest = s;
  }
  // Fix the sum: give to (or take from) the symbols with the most room, largest first.
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

}  // namespace

Result<Model> Model::from_counts(std::span<const uint64_t> counts) {
  if (counts.empty() || counts.size() > 256) return make_error(ErrorCode::kInternal, "rans: alphabet size out of range");
  uint64_t max_count = 0;
  for (uint64_t c : counts) max_count = std::max(max_count, c);
  if (max_count == 0) return make_error(ErrorCode::kInternal, "rans: no symbols");
  // Quantize each count, relative to the largest, to a code c with weight 2^(c/8): a frequency costs one
  // byte in the table, and the coding loss of the ~4% rounding is far below the bytes it saves.
  std::vector<uint8_t> codes(counts.size(), 0);
  std::vector<uint64_t> weights(counts.size(), 0);
  for (size_t s = 0; s < counts.size(); ++s) {
    if (counts[s] == 0) continue;
    const double below_max = std::log2(static_cast<double>(max_count) / static_cast<double>(counts[s]));
    const long steps = std::lround(8.0 * below_max);
    codes[s] = static_cast<uint8_t>(kMaxCode - std::min<long>(steps, kMaxCode - 1));
    weights[s] = weight_of_code(codes[s]);
  }
  Model m = model_from_weights(weights);
  m.code = std::move(codes);
  return m;
}

void Model::serialize(std::vector<std::byte>& out) const {
  uint64_t present = 0;
  for (uint16_t f : freq) present += f ? 1 : 0;
  put_varint(out, present);
  for (size_t s = 0; s < freq.size(); ++s) {
    if (!freq[s]) continue;
    out.push_back(static_cast<std::byte>(s));
    out.push_back(static_cast<std::byte>(code[s]));
  }
}

Result<Model> Model::parse(std::span<const std::byte> in, size_t* consumed, uint32_t alphabet_size) {
  size_t at = *consumed;
  uint64_t present = 0;
  if (!get_varint(in, &at, &present) || present == 0 || present > alphabet_size) return decode_error("bad symbol count");
  std::vector<uint8_t> codes(alphabet_size, 0);
  std::vector<uint64_t> weights(alphabet_size, 0);
  int last = -1;
  for (uint64_t i = 0; i < present; ++i) {
    if (in.size() - at < 2) return decode_error("truncated model");
    const int s = static_cast<int>(in[at++]);
    const uint8_t c = static_cast<uint8_t>(in[at++]);
    if (s >= static_cast<int>(alphabet_size) || s <= last || c == 0 || c > kMaxCode) return decode_error("bad model entry");
    codes[static_cast<size_t>(s)] = c;
    weights[static_cast<size_t>(s)] = weight_of_code(c);
    last = s;
  }
  Model m = model_from_weights(weights);
  m.code = std::move(codes);
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
