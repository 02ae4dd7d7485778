// native_encoder.cc — gpu::NativeEncoder: the native codec's per-change half on the device (kernels.h,
// symbolize_chunks and pack_chunks), the per-tensor half on the host (codec::native::encode_symbols).
//
// Flow of one encode(): plan chunks of <= kSymbolChunk changes of one tensor; launch symbolize (gap lengths
// and value symbols per change, mantissa bits and escapes per chunk); copy the symbols and the chunks'
// totals to the host and synchronize; place every tensor's mantissa section on a word boundary and every
// chunk's bits and escapes; zero the words, launch pack; copy the words and escapes and synchronize; finish
// each tensor on the host.
#include <algorithm>
#include <cstring>

#include "gpu/gpu_internal.h"
#include "gpu/kernels.h"
#include "gpu/native_plan.h"

namespace dws::gpu {

namespace detail {

SymbolPlan plan_symbol_chunks(std::span<const DeviceChangeSet::Entry> tensors) {
  SymbolPlan plan;
  for (size_t t = 0; t < tensors.size(); ++t) {
    const DeviceChangeSet::Entry& e = tensors[t];
    for (uint64_t j = 0; j < e.count; j += kSymbolChunk) {
      plan.chunks.push_back({static_cast<uint32_t>(t), e.first_change + j,
                             static_cast<uint32_t>(std::min<uint64_t>(kSymbolChunk, e.count - j)), j == 0});
    }
  }
  return plan;
}

SymbolPlacement place_symbols(const SymbolPlan& plan, size_t tensors, std::span<const uint32_t> counts) {
  SymbolPlacement p;
  p.chunk_first_bit.resize(plan.chunks.size());
  p.chunk_first_escape.resize(plan.chunks.size());
  p.tensor_bits.assign(tensors, 0);
  p.tensor_escapes.assign(tensors, 0);
  for (size_t c = 0; c < plan.chunks.size(); ++c) {
    const uint32_t t = plan.chunks[c].tensor;
    p.chunk_first_bit[c] = p.tensor_bits[t];
    p.chunk_first_escape[c] = p.escapes;
    p.tensor_bits[t] += counts[2 * c];
    p.escapes += counts[2 * c + 1];
    p.tensor_escapes[t] += counts[2 * c + 1];
  }
  p.tensor_first_word.resize(tensors);
  p.tensor_first_escape.resize(tensors);
  uint64_t escape = 0;
  for (size_t t = 0; t < tensors; ++t) {
    p.tensor_first_word[t] = p.words;
    p.words += (p.tensor_bits[t] + 63) / 64;
    p.tensor_first_escape[t] = escape;
    escape += p.tensor_escapes[t];
  }
  return p;
}

codec::native::ChangeSymbols tensor_symbols(const DeviceChangeSet::Entry& entry, size_t t, const SymbolPlacement& placement,
                                            const uint8_t* gap_lengths, const uint8_t* values, const uint64_t* words,
                                            const uint64_t* escapes) {
  codec::native::ChangeSymbols s;
  s.gap_lengths.assign(gap_lengths + entry.first_change, gap_lengths + entry.first_change + entry.count);
  s.values.assign(values + entry.first_change, values + entry.first_change + entry.count);
  s.mantissas.resize((placement.tensor_bits[t] + 7) / 8);  // little-endian words: the section's bytes in order
  if (!s.mantissas.empty()) std::memcpy(s.mantissas.data(), words + placement.tensor_first_word[t], s.mantissas.size());
  s.escapes.assign(escapes + placement.tensor_first_escape[t], escapes + placement.tensor_first_escape[t] + placement.tensor_escapes[t]);
  return s;
}

}  // namespace detail

struct NativeEncoder::Scratch {
  DeviceBuffer symbols;   // gap lengths (total bytes), then value symbols (total bytes), then the chunks' counts
  DeviceBuffer words;     // mantissa words, then escapes
  PinnedBuffer host_symbols, host_words;
  uint64_t last_host_bytes = 0;
};

NativeEncoder::NativeEncoder() : scratch_(std::make_unique<Scratch>()) {}
NativeEncoder::~NativeEncoder() = default;
NativeEncoder::NativeEncoder(NativeEncoder&&) noexcept = default;
NativeEncoder& NativeEncoder::operator=(NativeEncoder&&) noexcept = default;
uint64_t NativeEncoder::last_host_bytes() const { return scratch_->last_host_bytes; }

Result<std::vector<std::vector<std::byte>>> NativeEncoder::encode(const DeviceChangeSet& changes, Stream stream) {
  Scratch& s = *scratch_;
  s.last_host_bytes = 0;
  std::vector<std::vector<std::byte>> payloads(changes.tensors.size());
  if (changes.total == 0) {
    for (size_t t = 0; t < payloads.size(); ++t) {
      DWS_ASSIGN_OR_RETURN(payloads[t], codec::native::encode_symbols(changes.tensors[t].dtype, changes.tensors[t].numel, {}));
    }
    return payloads;
  }
  if (!detail::available()) return detail::no_cuda();
  const uint64_t n = changes.total;
  const detail::SymbolPlan plan = detail::plan_symbol_chunks(changes.tensors);
  const uint64_t counts_at = (2 * n + 7) / 8 * 8;
  const uint64_t symbol_bytes = counts_at + plan.chunks.size() * 2 * sizeof(uint32_t);
  DWS_RETURN_IF_ERROR(detail::reserve_device(s.symbols, symbol_bytes));
  DWS_RETURN_IF_ERROR(s.host_symbols.reserve(symbol_bytes));
  auto* d_symbols = static_cast<uint8_t*>(s.symbols.data());
  auto* d_counts = reinterpret_cast<uint32_t*>(d_symbols + counts_at);

  const auto* positions = static_cast<const uint64_t*>(changes.positions.data());
  const auto* base = static_cast<const std::byte*>(changes.base_values.data());
  const auto* target = static_cast<const std::byte*>(changes.target_values.data());
  std::vector<detail::SymbolChunk> chunks(plan.chunks.size());
  for (size_t c = 0; c < plan.chunks.size(); ++c) {
    const detail::SymbolPlan::Chunk& pc = plan.chunks[c];
    const DeviceChangeSet::Entry& e = changes.tensors[pc.tensor];
    const uint64_t w = dtype_size_bytes(e.dtype);
    const uint64_t value_at = e.value_byte + (pc.first_change - e.first_change) * w;
    detail::SymbolChunk& k = chunks[c];
    k.positions = positions + pc.first_change;
    k.base_values = base + value_at;
    k.target_values = target + value_at;
    k.gap_lengths = d_symbols + pc.first_change;
    k.values = d_symbols + n + pc.first_change;
    k.counts = d_counts + 2 * c;
    k.count = pc.count;
    k.elem_size = static_cast<uint8_t>(w);
    k.is_float = dtype_is_float(e.dtype) ? 1 : 0;
    k.tensor_start = pc.tensor_start ? 1 : 0;
  }
  DWS_RETURN_IF_ERROR(detail::symbolize_chunks(chunks.data(), chunks.size(), stream));
  DWS_RETURN_IF_ERROR(detail::copy_async(s.host_symbols.data(), d_symbols, symbol_bytes, stream));
  DWS_RETURN_IF_ERROR(detail::sync(stream));

  const auto* h_symbols = static_cast<const uint8_t*>(s.host_symbols.data());
  const detail::SymbolPlacement placement = detail::place_symbols(
      plan, changes.tensors.size(), {reinterpret_cast<const uint32_t*>(h_symbols + counts_at), plan.chunks.size() * 2});
  const uint64_t word_bytes = (placement.words + placement.escapes) * sizeof(uint64_t);
  if (word_bytes > 0) {
    DWS_RETURN_IF_ERROR(detail::reserve_device(s.words, word_bytes));
    DWS_RETURN_IF_ERROR(s.host_words.reserve(word_bytes));
    auto* d_words = static_cast<unsigned long long*>(s.words.data());
    auto* d_escapes = reinterpret_cast<uint64_t*>(d_words + placement.words);
    for (size_t c = 0; c < chunks.size(); ++c) {
      const uint32_t t = plan.chunks[c].tensor;
      chunks[c].words = d_words + placement.tensor_first_word[t];
      chunks[c].first_bit = placement.chunk_first_bit[c];
      chunks[c].escapes = d_escapes + placement.chunk_first_escape[c];
    }
    DWS_RETURN_IF_ERROR(detail::memset_async(d_words, 0, placement.words * sizeof(uint64_t), stream));
    DWS_RETURN_IF_ERROR(detail::pack_chunks(chunks.data(), chunks.size(), stream));
    DWS_RETURN_IF_ERROR(detail::copy_async(s.host_words.data(), d_words, word_bytes, stream));
    DWS_RETURN_IF_ERROR(detail::sync(stream));
  }
  s.last_host_bytes = symbol_bytes + word_bytes;

  const auto* h_words = word_bytes > 0 ? static_cast<const uint64_t*>(s.host_words.data()) : nullptr;
  for (size_t t = 0; t < changes.tensors.size(); ++t) {
    const DeviceChangeSet::Entry& e = changes.tensors[t];
    const codec::native::ChangeSymbols symbols = detail::tensor_symbols(
        e, t, placement, h_symbols, h_symbols + n, h_words, h_words ? h_words + placement.words : nullptr);
    // encode_symbols checks the device's symbols as hostile: a kernel fault is an error, never a bad payload.
    DWS_ASSIGN_OR_RETURN(payloads[t], codec::native::encode_symbols(e.dtype, e.numel, symbols));
  }
  return payloads;
}

}  // namespace dws::gpu
