// rans.h — static range-ANS entropy coder over small alphabets (internal).
//
// Byte-wise rANS with a 32-bit state, 12-bit probabilities (frequencies sum to 4096) and the state's
// lower bound kLow = 2^23. Several models can share one stream: the decoder must ask for symbols with the
// same models in the same order the encoder was given them. Encoding runs backwards internally; callers
// push symbols in natural order and get a stream that decodes forwards.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "dws/status.h"

namespace dws::rans {

inline constexpr uint32_t kProbBits = 12;
inline constexpr uint32_t kProbScale = 1u << kProbBits;
inline constexpr uint32_t kLow = 1u << 23;

// A static model over an alphabet of up to 256 symbols: frequencies summing to kProbScale, every present
// symbol with a non-zero frequency. The frequencies are derived from one byte per present symbol, a
// code c in 1..kMaxCode with weight 2^(c/8) (integer arithmetic only), so a serialized model costs two
// bytes per symbol and decodes to the identical model everywhere.
inline constexpr uint8_t kMaxCode = 200;

struct Model {
  std::vector<uint16_t> freq;   // indexed by symbol
  std::vector<uint16_t> start;  // cumulative
  std::vector<uint8_t> slot_to_symbol;  // kProbScale entries (decoder)
  std::vector<uint8_t> code;    // per symbol, 0 when absent (what serialize writes)

  // Quantizes counts (relative to the largest) to codes and builds the model they describe.
  static Result<Model> from_counts(std::span<const uint64_t> counts);
  // Serialized form: varint symbol_count, then per present symbol, ascending: u8 symbol, u8 code.
  void serialize(std::vector<std::byte>& out) const;
  // Parses and validates (symbols < alphabet_size, strictly ascending, codes in 1..kMaxCode).
  static Result<Model> parse(std::span<const std::byte> in, size_t* consumed, uint32_t alphabet_size);
};

class Encoder {
 public:
  void push(const Model& model, uint32_t symbol) { symbols_.push_back({&model, symbol}); }
  // Encodes everything pushed so far into a forward-decodable stream.
  std::vector<std::byte> finish();

 private:
  struct Item {
    const Model* model;
    uint32_t symbol;
  };
  std::vector<Item> symbols_;
};

class Decoder {
 public:
  // Reads the 4-byte initial state; E_DECODE when the stream is too short.
  static Result<Decoder> start(std::span<const std::byte> stream);
  // Next symbol under `model`; false when the stream runs out (the caller reports E_DECODE).
  bool next(const Model& model, uint32_t* symbol) {
    const uint32_t slot = state_ & (kProbScale - 1);
    const uint32_t s = model.slot_to_symbol[slot];
    state_ = model.freq[s] * (state_ >> kProbBits) + slot - model.start[s];
    while (state_ < kLow) {
      if (at_ >= stream_.size()) return false;
      state_ = (state_ << 8) | static_cast<uint32_t>(stream_[at_++]);
    }
    *symbol = s;
    return true;
  }
  // True when every byte was consumed and the state is back at its initial value (an integrity check).
  bool finished_cleanly() const { return at_ == stream_.size() && state_ == kLow; }

 private:
  std::span<const std::byte> stream_;
  size_t at_ = 0;
  uint32_t state_ = 0;
};

// LEB128 unsigned varints.
void put_varint(std::vector<std::byte>& out, uint64_t v);
// Returns false on truncation or a value above 2^64-1.
bool get_varint(std::span<const std::byte> in, size_t* at, uint64_t* v);

}  // namespace dws::rans
