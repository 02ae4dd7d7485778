// gpu::NativeEncoder: the native codec's per-change half on the device. Its host logic (chunk plan,
// placement of the mantissa sections, assembly) runs everywhere around a host model of the two kernels that
// follows their work split exactly (a thread's run of consecutive changes, an exclusive scan over the runs,
// bits ORed into shared words); on a device, the kernels must give the CPU encoder's payloads byte for byte.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "codec/native.h"
#include "codec/native_symbols.h"
#include "dws/diff.h"
#include "dws/gpu.h"
#include "gpu/kernels.h"
#include "gpu/native_plan.h"
#include "gpu_test_util.h"
#include "test_util.h"

namespace dws {
namespace {

using test::sprinkle_special_values;
using test::upload;

// A change set in host memory, laid out as Differ lays out a DeviceChangeSet.
struct HostSet {
  std::vector<gpu::DeviceChangeSet::Entry> entries;
  std::vector<uint64_t> positions;
  std::vector<std::byte> base_values, target_values;
  std::vector<test::HostTensor> bases, targets;
};

HostSet host_set(std::mt19937_64& rng, const std::vector<std::tuple<DType, uint64_t, double>>& tensors) {
  HostSet s;
  for (const auto& [dt, numel, density] : tensors) {
    auto base = test::random_tensor(rng, "t", dt, {numel});
    sprinkle_special_values(rng, base);
    auto next = test::mutate(rng, base, density);
    const size_t w = dtype_size_bytes(dt);
    const auto positions = *diff_elements(base.bytes, next.bytes, w, 1);
    gpu::DeviceChangeSet::Entry e{dt, numel, s.positions.size(), positions.size(), (s.base_values.size() + 7) / 8 * 8};
    s.base_values.resize(e.value_byte);
    s.target_values.resize(e.value_byte);
    for (uint64_t p : positions) {
      s.base_values.insert(s.base_values.end(), base.bytes.begin() + p * w, base.bytes.begin() + (p + 1) * w);
      s.target_values.insert(s.target_values.end(), next.bytes.begin() + p * w, next.bytes.begin() + (p + 1) * w);
    }
    s.positions.insert(s.positions.end(), positions.begin(), positions.end());
    s.entries.push_back(e);
    s.bases.push_back(std::move(base));
    s.targets.push_back(std::move(next));
  }
  return s;
}

uint64_t distance(DType dt, uint64_t b, uint64_t t) {
  using namespace codec::native;
  const bool f = dtype_is_float(dt);
  switch (dtype_size_bytes(dt)) {
    case 1: return f ? zigzag_key_distance<1, true>(b, t) : zigzag_key_distance<1, false>(b, t);
    case 2: return f ? zigzag_key_distance<2, true>(b, t) : zigzag_key_distance<2, false>(b, t);
    case 4: return f ? zigzag_key_distance<4, true>(b, t) : zigzag_key_distance<4, false>(b, t);
    default: return f ? zigzag_key_distance<8, true>(b, t) : zigzag_key_distance<8, false>(b, t);
  }
}

// The kernels' work on one chunk, as they split it (kernels.cu, symbol_chunks_kernel).
struct ChunkModel {
  const HostSet& s;
  const gpu::detail::SymbolPlan::Chunk& c;
  uint64_t gap(uint32_t i) const {
    const uint64_t p = s.positions[c.first_change + i];
    return i == 0 && c.tensor_start ? p : p - s.positions[c.first_change + i - 1] - 1;
  }
  uint64_t z(uint32_t i) const {
    const auto& e = s.entries[c.tensor];
    const size_t w = dtype_size_bytes(e.dtype);
    const uint64_t at = e.value_byte + (c.first_change - e.first_change + i) * w;
    uint64_t b = 0, t = 0;
    std::memcpy(&b, s.base_values.data() + at, w);
    std::memcpy(&t, s.target_values.data() + at, w);
    return distance(e.dtype, b, t);
  }
};

TEST(GpuReference, NativeEncoderPlanAndPackingGiveTheCpuSymbolsAndPayloads) {
  using namespace codec::native;
  constexpr uint32_t kThreads = 256;
  constexpr uint32_t kRun = gpu::detail::kSymbolChunk / kThreads;
  std::mt19937_64 rng(91);
  // Tensors over several chunks (a chunk boundary inside a tensor), none changed, dense ones, every width.
  const HostSet s = host_set(rng, {{DType::kBF16, 600000, 0.02}, {DType::kF32, 5000, 0.0}, {DType::kU8, 3000, 1.0},
                                   {DType::kF64, 9000, 0.5}, {DType::kBF16, 1, 1.0}, {DType::kI16, 20000, 0.3},
                                   {DType::kF8_E4M3, 70000, 0.06}, {DType::kF16, 4097, 1.0}});
  const uint64_t n = s.positions.size();
  const gpu::detail::SymbolPlan plan = gpu::detail::plan_symbol_chunks(s.entries);
  ASSERT_GT(plan.chunks.size(), s.entries.size());
  // Symbolize: per change, and the chunk's totals.
  std::vector<uint8_t> gap_lengths(n), values(n);
  std::vector<uint32_t> counts(2 * plan.chunks.size());
  for (size_t k = 0; k < plan.chunks.size(); ++k) {
    const ChunkModel m{s, plan.chunks[k]};
    for (uint32_t i = 0; i < m.c.count; ++i) {
      const uint32_t len = gap_bit_length(m.gap(i));
      const uint64_t z = m.z(i);
      gap_lengths[m.c.first_change + i] = static_cast<uint8_t>(len);
      values[m.c.first_change + i] = static_cast<uint8_t>(std::min<uint64_t>(z, kEscapeSymbol));
      counts[2 * k] += gap_mantissa_bits(len);
      counts[2 * k + 1] += z >= kEscapeSymbol ? 1 : 0;
    }
  }
  const gpu::detail::SymbolPlacement placement = gpu::detail::place_symbols(plan, s.entries.size(), counts);
  // Pack: each thread's run of consecutive changes, offsets from an exclusive scan over the runs.
  std::vector<uint64_t> words(placement.words), escapes(placement.escapes, ~0ull);
  for (size_t k = 0; k < plan.chunks.size(); ++k) {
    const ChunkModel m{s, plan.chunks[k]};
    uint64_t bit_offset = 0, escape_offset = 0;  // the scan
    for (uint32_t t = 0; t < kThreads; ++t) {
      const uint32_t begin = std::min(t * kRun, m.c.count), end = std::min(begin + kRun, m.c.count);
      uint64_t bit = placement.chunk_first_bit[k] + bit_offset;
      uint64_t escape = placement.chunk_first_escape[k] + escape_offset;
      uint64_t* tensor_words = words.data() + placement.tensor_first_word[m.c.tensor];
      for (uint32_t i = begin; i < end; ++i) {
        const uint64_t g = m.gap(i);
        const uint32_t bits = gap_mantissa_bits(gap_bit_length(g));
        if (bits > 0) {
          const uint64_t v = g & ((1ull << bits) - 1);
          const uint32_t sh = static_cast<uint32_t>(bit % 64);
          tensor_words[bit / 64] |= v << sh;
          if (sh + bits > 64) tensor_words[bit / 64 + 1] |= v >> (64 - sh);
          bit += bits;
        }
        if (m.z(i) >= kEscapeSymbol) escapes[escape++] = m.z(i) - kEscapeSymbol;
      }
      bit_offset = bit - placement.chunk_first_bit[k];
      escape_offset = escape - placement.chunk_first_escape[k];
    }
    ASSERT_EQ(bit_offset, counts[2 * k]);
    ASSERT_EQ(escape_offset, counts[2 * k + 1]);
  }
  uint64_t escaped = 0;
  for (size_t t = 0; t < s.entries.size(); ++t) {
    const auto& e = s.entries[t];
    const size_t w = dtype_size_bytes(e.dtype);
    const auto positions = std::span<const uint64_t>(s.positions).subspan(e.first_change, e.count);
    const auto bv = std::span<const std::byte>(s.base_values).subspan(e.value_byte, e.count * w);
    const auto tv = std::span<const std::byte>(s.target_values).subspan(e.value_byte, e.count * w);
    const ChangeSymbols got = gpu::detail::tensor_symbols(e, t, placement, gap_lengths.data(), values.data(), words.data(),
                                                         escapes.data());
    const ChangeSymbols want = *symbolize_changes(e.dtype, e.numel, positions, bv, tv);
    EXPECT_EQ(got.gap_lengths, want.gap_lengths) << "tensor " << t;
    EXPECT_EQ(got.values, want.values) << "tensor " << t;
    EXPECT_EQ(got.mantissas, want.mantissas) << "tensor " << t;
    EXPECT_EQ(got.escapes, want.escapes) << "tensor " << t;
    escaped += got.escapes.size();
    auto payload = encode_symbols(e.dtype, e.numel, got);
    ASSERT_TRUE(payload.ok()) << payload.status().to_string();
    EXPECT_EQ(*payload, *encode_changes(e.dtype, e.numel, positions, bv, tv)) << "tensor " << t;
  }
  EXPECT_GT(escaped, 0u);
}

TEST(GpuReference, NativeEncoderWithoutADeviceSaysWhy) {
  if (test::have_device()) GTEST_SKIP() << "a device is present: the device test covers it";
  gpu::NativeEncoder encoder;
  gpu::DeviceChangeSet empty;
  empty.tensors.push_back({DType::kBF16, 10, 0, 0, 0});
  auto none = encoder.encode(empty, nullptr);  // nothing changed: no device needed
  ASSERT_TRUE(none.ok()) << none.status().to_string();
  ASSERT_EQ(none->size(), 1u);
  EXPECT_EQ((*none)[0], (std::vector<std::byte>{std::byte{1}, std::byte{0}}));
  gpu::DeviceChangeSet some;
  some.tensors.push_back({DType::kBF16, 10, 0, 1, 0});
  some.total = 1;
  const Status st = encoder.encode(some, nullptr).status();
  EXPECT_TRUE(st.code() == ErrorCode::kUnsupported || st.code() == ErrorCode::kDevice) << st.to_string();
}

// On a device: the payloads of Differ's change set equal the CPU encoder's for the same changes, and decode.
TEST(Gpu, NativeEncoderWritesTheCpuPayloads) {
  REQUIRE_DEVICE();
  std::mt19937_64 rng(92);
  gpu::Differ differ;
  gpu::NativeEncoder encoder;
  gpu::DeviceChangeSet changes;
  gpu::HostChangeSet host;
  for (int round = 0; round < 2; ++round) {  // round 1 reuses round 0's buffers with other sizes
    const HostSet s = host_set(rng, {{DType::kBF16, round == 0 ? 2000000u : 300000u, 0.004}, {DType::kF32, 5000, 0.0},
                                     {DType::kU8, 3000, 1.0}, {DType::kF64, 9000, 0.5}, {DType::kI16, 20000, 0.3},
                                     {DType::kF8_E5M2, 70000, 0.06}, {DType::kBF16, 4097, 1.0}});
    std::vector<gpu::DeviceBuffer> buffers;
    std::vector<gpu::DiffInput> inputs;
    for (size_t t = 0; t < s.entries.size(); ++t) {
      buffers.push_back(upload(s.bases[t].bytes));
      buffers.push_back(upload(s.targets[t].bytes));
      inputs.push_back({buffers[buffers.size() - 2].data(), buffers.back().data(), s.entries[t].dtype, s.entries[t].numel});
    }
    ASSERT_TRUE(differ.diff(inputs, nullptr, changes).ok());
    ASSERT_TRUE(gpu::Differ::to_host(changes, host, nullptr).ok());
    auto payloads = encoder.encode(changes, nullptr);
    ASSERT_TRUE(payloads.ok()) << payloads.status().to_string();
    ASSERT_EQ(payloads->size(), s.entries.size());
    EXPECT_GT(encoder.last_host_bytes(), 0u);
    for (size_t t = 0; t < s.entries.size(); ++t) {
      const auto& e = s.entries[t];
      auto want = codec::native::encode_changes(e.dtype, e.numel, host.positions(t), host.base_values(t), host.target_values(t));
      ASSERT_TRUE(want.ok());
      EXPECT_EQ((*payloads)[t], *want) << "round " << round << " tensor " << t;
      test::Decoded d;
      ASSERT_TRUE(codec::native::decode(e.dtype, e.numel, e.count, (*payloads)[t], s.bases[t].bytes, d.sink()).ok());
      EXPECT_EQ(d.positions, std::vector<uint64_t>(host.positions(t).begin(), host.positions(t).end()));
    }
  }
}

}  // namespace
}  // namespace dws
