// The native encoding's building blocks: the order-preserving key, the rANS coder, and the decoder's
// refusals of payloads an encoder would never produce.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>

#include "codec/codecs.h"
#include "codec/native.h"
#include "codec/rans.h"
#include "dws/diff.h"
#include "test_util.h"

namespace dws {
namespace {

TEST(NativeKey, IsABijectionOnEveryOneAndTwoByteBitPattern) {
  for (DType dt : kAllDTypes) {
    const size_t w = dtype_size_bytes(dt);
    if (w > 2) continue;
    const uint64_t n = 1ull << (8 * w);
    std::vector<bool> seen(n, false);
    for (uint64_t bits = 0; bits < n; ++bits) {
      const uint64_t key = codec::native::to_key(dt, bits);
      ASSERT_LT(key, n);
      ASSERT_FALSE(seen[key]) << dtype_name(dt) << " key collision at " << bits;
      seen[key] = true;
      ASSERT_EQ(codec::native::from_key(dt, key), bits) << dtype_name(dt);
    }
  }
}

TEST(NativeKey, OrdersFloatsSoThatOneUlpIsOne) {
  // Consecutive finite floats (by value) have consecutive keys, across zero too (-0.0 sits next to +0.0).
  std::vector<float> values = {-3.0f, -1.0f, -1e-30f, -0.0f, 0.0f, 1e-30f, 1.0f, 2.5f};
  for (size_t i = 0; i + 1 < values.size(); ++i) {
    const uint64_t a = codec::native::to_key(DType::kF32, std::bit_cast<uint32_t>(values[i]));
    const uint64_t b = codec::native::to_key(DType::kF32, std::bit_cast<uint32_t>(values[i + 1]));
    EXPECT_LT(a, b) << values[i] << " vs " << values[i + 1];
  }
  const float x = 0.37f;
  const float up = std::nextafter(x, 1.0f);
  EXPECT_EQ(codec::native::to_key(DType::kF32, std::bit_cast<uint32_t>(up)) -
                codec::native::to_key(DType::kF32, std::bit_cast<uint32_t>(x)),
            1u);
  EXPECT_EQ(codec::native::to_key(DType::kF32, std::bit_cast<uint32_t>(0.0f)) -
                codec::native::to_key(DType::kF32, std::bit_cast<uint32_t>(-0.0f)),
            1u);
}

TEST(Rans, RoundTripsRandomStreamsUnderSeveralModels) {
  std::mt19937_64 rng(71);
  for (int trial = 0; trial < 50; ++trial) {
    const size_t alphabet_a = 1 + rng() % 256, alphabet_b = 1 + rng() % 65;
    std::vector<uint64_t> counts_a(alphabet_a), counts_b(alphabet_b);
    for (auto& c : counts_a) c = (rng() % 3 == 0) ? 0 : rng() % 10000;
    for (auto& c : counts_b) c = rng() % 100;
    counts_a[rng() % alphabet_a] += 1;
    counts_b[rng() % alphabet_b] += 1;
    auto ma = rans::Model::from_counts(counts_a);
    auto mb = rans::Model::from_counts(counts_b);
    ASSERT_TRUE(ma.ok() && mb.ok());
    uint32_t sum = 0;
    for (auto f : ma->freq) sum += f;
    ASSERT_EQ(sum, rans::kProbScale);
    // Draw symbols that exist in each model.
    auto draw = [&](const rans::Model& m) {
      for (;;) {
        uint32_t s = static_cast<uint32_t>(rng() % m.freq.size());
        if (m.freq[s]) return s;
      }
    };
    std::vector<std::pair<int, uint32_t>> seq;
    rans::Encoder enc;
    const size_t n = rng() % 5000;
    for (size_t i = 0; i < n; ++i) {
      const int which = static_cast<int>(rng() % 2);
      const uint32_t s = draw(which ? *mb : *ma);
      seq.push_back({which, s});
      enc.push(which ? *mb : *ma, s);
    }
    auto stream = enc.finish();
    // The model tables survive serialization.
    std::vector<std::byte> table;
    ma->serialize(table);
    size_t at = 0;
    auto parsed = rans::Model::parse(table, &at, 256);
    ASSERT_TRUE(parsed.ok());
    auto expected = ma->freq;
    expected.resize(256, 0);  // parse sizes the table to the whole alphabet
    EXPECT_EQ(parsed->freq, expected);
    auto dec = rans::Decoder::start(stream);
    ASSERT_TRUE(dec.ok());
    for (const auto& [which, s] : seq) {
      uint32_t got = 0;
      ASSERT_TRUE(dec->next(which ? *mb : *ma, &got));
      ASSERT_EQ(got, s);
    }
    EXPECT_TRUE(dec->finished_cleanly());
  }
}

TEST(Rans, RefusesBadModels) {
  auto parse = [](std::vector<uint8_t> bytes, uint32_t alphabet) {
    std::vector<std::byte> t;
    for (uint8_t b : bytes) t.push_back(static_cast<std::byte>(b));
    size_t at = 0;
    return rans::Model::parse(t, &at, alphabet).status().code();
  };
  EXPECT_EQ(parse({2, 3, 100, 1, 100}, 256), ErrorCode::kDecode);   // symbols descending
  EXPECT_EQ(parse({2, 3, 100, 3, 100}, 256), ErrorCode::kDecode);   // repeated
  EXPECT_EQ(parse({1, 70, 100}, 65), ErrorCode::kDecode);           // outside the alphabet
  EXPECT_EQ(parse({1, 70, 0}, 256), ErrorCode::kDecode);            // code 0
  EXPECT_EQ(parse({1, 70, rans::kMaxCode + 1}, 256), ErrorCode::kDecode);
  EXPECT_EQ(parse({0}, 256), ErrorCode::kDecode);                   // no symbols
  EXPECT_EQ(parse({2, 3, 100}, 256), ErrorCode::kDecode);           // truncated
  EXPECT_EQ(parse({1, 70, 100}, 256), ErrorCode::kOk);
}

// The table's codes describe the counts within the quantization step, and every table, however
// skewed, sums to 4096 with every present symbol coded.
TEST(Rans, QuantizedTablesStayCloseToTheCounts) {
  std::mt19937_64 rng(76);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<uint64_t> counts(1 + rng() % 256, 0);
    for (auto& c : counts) c = rng() % 4 == 0 ? 0 : (1ull << (rng() % 40)) + rng() % 1000;
    counts[rng() % counts.size()] = 1ull << 45;
    auto m = rans::Model::from_counts(counts);
    ASSERT_TRUE(m.ok());
    uint32_t sum = 0;
    for (size_t s = 0; s < counts.size(); ++s) {
      sum += m->freq[s];
      ASSERT_EQ(m->freq[s] > 0, counts[s] > 0) << "symbol " << s;
    }
    ASSERT_EQ(sum, rans::kProbScale);
    std::vector<std::byte> t;
    m->serialize(t);
    size_t at = 0;
    auto back = rans::Model::parse(t, &at, 256);
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(at, t.size());
    auto expected = m->freq;
    expected.resize(256, 0);
    EXPECT_EQ(back->freq, expected);
  }
  // A typical value distribution: the quantized model costs < 0.5% more bits than the exact one.
  std::vector<uint64_t> counts = {0, 5200, 5100, 1500, 1450, 600, 580, 200, 190, 60, 58, 20, 19, 7, 6, 2, 2};
  auto m = rans::Model::from_counts(counts);
  ASSERT_TRUE(m.ok());
  double total = 0, exact_bits = 0, model_bits = 0;
  for (uint64_t c : counts) total += static_cast<double>(c);
  for (size_t s = 0; s < counts.size(); ++s) {
    if (!counts[s]) continue;
    exact_bits += static_cast<double>(counts[s]) * -std::log2(static_cast<double>(counts[s]) / total);
    model_bits += static_cast<double>(counts[s]) * -std::log2(m->freq[s] / 4096.0);
  }
  EXPECT_LT(model_bits, exact_bits * 1.005) << model_bits << " vs " << exact_bits;
}

using codec::native::Layout;

using test::Decoded;

Result<Decoded> native_decode(DType dt, uint64_t numel, uint64_t changes, std::span<const std::byte> payload,
                              std::span<const std::byte> base) {
  Decoded out;
  Status st = codec::native::decode(dt, numel, changes, payload, base, out.sink());
  if (!st.ok()) return st;
  return out;
}

// Every layout, forced, round-trips every dtype it exists for at every density, random bit patterns
// (NaN, ±Inf, −0.0, subnormals) included.
TEST(NativeLayouts, EachLayoutRoundTripsEveryDtypeAndDensity) {
  std::mt19937_64 rng(73);
  for (Layout layout : {Layout::kGaps, Layout::kBitmap, Layout::kClass}) {
    for (DType dt : kAllDTypes) {
      if (layout == Layout::kClass && !codec::native::has_class_layout(dt)) continue;
      for (double density : {1e-4, 0.03, 0.4, 1.0}) {
        for (uint64_t numel : {1ull, 9ull, 64ull, 6000ull}) {
          auto base = test::random_tensor(rng, "t", dt, {numel});
          auto next = test::mutate(rng, base, density);
          const size_t w = dtype_size_bytes(dt);
          auto positions = *diff_elements(base.bytes, next.bytes, w, 1);
          if (positions.empty()) continue;
          auto payload = codec::native::encode(dt, base.bytes, next.bytes, positions, {false, layout});
          ASSERT_TRUE(payload.ok()) << payload.status().to_string();
          ASSERT_EQ(static_cast<uint8_t>((*payload)[0]), static_cast<uint8_t>(layout));
          auto d = native_decode(dt, numel, positions.size(), *payload, base.bytes);
          ASSERT_TRUE(d.ok()) << dtype_name(dt) << " layout " << int(layout) << ": " << d.status().to_string();
          ASSERT_EQ(d->positions, positions) << dtype_name(dt) << " layout " << int(layout) << " density " << density;
          for (size_t i = 0; i < positions.size(); ++i) {
            ASSERT_EQ(std::memcmp(d->values.data() + i * w, next.bytes.data() + positions[i] * w, w), 0);
          }
        }
      }
    }
  }
}

TEST(NativeLayouts, ClassLayoutIsRefusedForIntegerDtypes) {
  std::mt19937_64 rng(74);
  auto base = test::random_tensor(rng, "t", DType::kI32, {100});
  auto next = test::mutate(rng, base, 0.1);
  auto positions = *diff_elements(base.bytes, next.bytes, 4, 1);
  EXPECT_EQ(codec::native::encode(DType::kI32, base.bytes, next.bytes, positions, {false, Layout::kClass}).status().code(),
            ErrorCode::kInvalidArgument);
  // Allowed but unavailable: the encoder falls back to the other layouts.
  auto p = codec::native::encode(DType::kI32, base.bytes, next.bytes, positions, {true, std::nullopt});
  ASSERT_TRUE(p.ok());
  EXPECT_NE(static_cast<uint8_t>((*p)[0]), static_cast<uint8_t>(Layout::kClass));
}

// The encoder picks the smallest allowed layout: the class layout when positions follow the base's
// exponents and it is allowed, the bitmap for dense clustered changes, gaps otherwise.
TEST(NativeLayouts, PicksTheSmallestAllowedLayout) {
  std::mt19937_64 rng(75);
  const uint64_t numel = 100000;
  test::HostTensor base{"t", DType::kBF16, {numel}, std::vector<std::byte>(numel * 2)};
  auto* b = reinterpret_cast<uint16_t*>(base.bytes.data());
  // 5% of the elements have exponent 120 and change with probability 10%; the rest (exponent 126)
  // never change: a change costs ~log2(200) bits of position as gaps, ~log2(10) within its class.
  for (uint64_t i = 0; i < numel; ++i) b[i] = static_cast<uint16_t>(((rng() % 20 == 0 ? 120u : 126u) << 7) | (rng() & 0x7F));
  test::HostTensor next = base;
  auto* nb = reinterpret_cast<uint16_t*>(next.bytes.data());
  for (uint64_t i = 0; i < numel; ++i) {
    if (((b[i] >> 7) & 0xFF) == 120 && rng() % 10 == 0) nb[i] = static_cast<uint16_t>(b[i] + 1);
  }
  auto positions = *diff_elements(base.bytes, next.bytes, 2, 1);
  auto size_of = [&](codec::native::Options o) {
    auto p = codec::native::encode(DType::kBF16, base.bytes, next.bytes, positions, o);
    EXPECT_TRUE(p.ok());
    return std::make_pair(p->size(), static_cast<Layout>((*p)[0]));
  };
  const auto gaps = size_of({false, Layout::kGaps});
  const auto cls = size_of({false, Layout::kClass});
  EXPECT_LT(cls.first, gaps.first * 0.7) << "class " << cls.first << " gaps " << gaps.first;
  EXPECT_EQ(size_of({false, std::nullopt}).second, Layout::kGaps);  // class not allowed
  EXPECT_EQ(size_of({true, std::nullopt}).second, Layout::kClass);
  // A pattern that repeats every 8 elements (elements 0 and 3 of each byte of the bitmap): the bitmap's
  // bytes are all alike, the gaps alternate 2 and 4 with raw low bits.
  next = base;
  for (uint64_t i = 0; i < numel; ++i) {
    if (i % 8 == 0 || i % 8 == 3) nb[i] = static_cast<uint16_t>(b[i] ^ 1);
  }
  positions = *diff_elements(base.bytes, next.bytes, 2, 1);
  auto chosen = size_of({false, std::nullopt});
  EXPECT_EQ(chosen.second, Layout::kBitmap);
  EXPECT_LT(chosen.first, size_of({false, Layout::kGaps}).first);
  // Dense random changes (40%): sizes are close, and from 1/8 density the bitmap, faster to decode, is
  // preferred within its size margin.
  next = base;
  for (uint64_t i = 0; i < numel; ++i) {
    if (rng() % 5 < 2) nb[i] = static_cast<uint16_t>(b[i] ^ 1);
  }
  positions = *diff_elements(base.bytes, next.bytes, 2, 1);
  chosen = size_of({false, std::nullopt});
  const auto gaps_dense = size_of({false, Layout::kGaps});
  if (chosen.second == Layout::kBitmap) {
    EXPECT_LE(static_cast<double>(chosen.first), static_cast<double>(gaps_dense.first) * codec::native::kBitmapSizeMargin);
  } else {
    EXPECT_GT(static_cast<double>(size_of({false, Layout::kBitmap}).first),
              static_cast<double>(gaps_dense.first) * codec::native::kBitmapSizeMargin);
  }
}

TEST(NativeLayouts, ClassGapsRunningPastTheTensorAreRefused) {
  // One class, one change, a first gap larger than the class's population.
  test::HostTensor base{"t", DType::kBF16, {8}, std::vector<std::byte>(16)};
  auto* b = reinterpret_cast<uint16_t*>(base.bytes.data());
  for (int i = 0; i < 8; ++i) b[i] = static_cast<uint16_t>((120u << 7) | i);
  std::vector<std::byte> p{std::byte{2}};
  rans::put_varint(p, 1);    // n
  rans::put_varint(p, 120);  // first class
  rans::put_varint(p, 1);    // span
  rans::put_varint(p, (1u << 6) | 3);  // count 1, Rice k = 3
  std::vector<uint64_t> vc(256, 0);
  vc[1] = 1;
  auto vm = *rans::Model::from_counts(vc);
  vm.serialize(p);
  rans::Encoder enc;
  enc.push(vm, 1);
  auto stream = enc.finish();
  rans::put_varint(p, stream.size());
  p.insert(p.end(), stream.begin(), stream.end());
  rans::put_varint(p, 1);
  p.push_back(std::byte{0x01});  // LSB first: unary q = 1 ("1", "0"), then 3 low bits 000: gap 8, population 8
  rans::put_varint(p, 0);
  auto d = native_decode(DType::kBF16, 8, 1, p, base.bytes);
  EXPECT_EQ(d.status().code(), ErrorCode::kPositions) << d.status().to_string();
  // The same payload with gap 7 (q = 0, low bits 111) decodes to position 7.
  p[p.size() - 2] = std::byte{0x0E};
  d = native_decode(DType::kBF16, 8, 1, p, base.bytes);
  ASSERT_TRUE(d.ok()) << d.status().to_string();
  EXPECT_EQ(d->positions, std::vector<uint64_t>{7});
}

class NativeDecode : public ::testing::TestWithParam<Layout> {
 protected:
  void SetUp() override {
    std::mt19937_64 rng(72);
    base_ = test::random_tensor(rng, "t", DType::kBF16, {4000});
    next_ = test::mutate(rng, base_, 0.04);
    positions_ = *diff_elements(base_.bytes, next_.bytes, 2, 1);
    payload_ = *codec::native::encode(DType::kBF16, base_.bytes, next_.bytes, positions_, {false, GetParam()});
  }
  Status decode(std::span<const std::byte> payload, uint64_t changes) {
    return codec::native::decode(DType::kBF16, 4000, changes, payload, base_.bytes,
                                 [](std::span<const uint64_t>, std::span<const std::byte>) { return Status::Ok(); });
  }
  test::HostTensor base_, next_;
  std::vector<uint64_t> positions_;
  std::vector<std::byte> payload_;
};

TEST_P(NativeDecode, AcceptsItsOwnPayloadAndRefusesDamagedOnes) {
  ASSERT_TRUE(decode(payload_, positions_.size()).ok());
  EXPECT_EQ(decode(payload_, positions_.size() + 1).code(), ErrorCode::kPatchMetadata);
  auto bad_version = payload_;
  bad_version[0] = std::byte{9};
  EXPECT_EQ(decode(bad_version, positions_.size()).code(), ErrorCode::kDecode);
  auto trailing = payload_;
  trailing.push_back(std::byte{0});
  EXPECT_EQ(decode(trailing, positions_.size()).code(), ErrorCode::kDecode);
  for (size_t n = 0; n < payload_.size(); ++n) {
    EXPECT_FALSE(decode(std::span(payload_).first(n), positions_.size()).ok()) << "prefix " << n;
  }
  // Single-bit flips: the decoder alone refuses many; the rest decode to other positions or values, which
  // the patch-level payload hash and target digest refuse (HostilePatch.EverySingleBitFlipIsRefused).
  // Here the point is that none crashes (the sanitizer build checks memory safety).
  size_t refused = 0;
  for (size_t i = 0; i < payload_.size(); ++i) {
    auto bad = payload_;
    bad[i] ^= std::byte{0x10};
    refused += decode(bad, positions_.size()).ok() ? 0 : 1;
  }
  std::printf("[ info ] native layout %d: %zu of %zu single-bit flips refused by the decoder alone\n", int(GetParam()),
              refused, payload_.size());
}

INSTANTIATE_TEST_SUITE_P(Layouts, NativeDecode, ::testing::Values(Layout::kGaps, Layout::kBitmap, Layout::kClass));

TEST(NativeDecodeGaps, RefusesAnUnchangedValue) {
  // Hand-build a payload claiming position 5 changed with distance 0 (an encoder never writes that).
  std::vector<std::byte> p{std::byte{1}};
  rans::put_varint(p, 1);
  std::vector<uint64_t> gap_counts(65, 0), value_counts(256, 0);
  gap_counts[3] = 1;   // gap 5 has bit length 3
  value_counts[0] = 1;  // zigzag 0
  auto gm = *rans::Model::from_counts(gap_counts);
  auto vm = *rans::Model::from_counts(value_counts);
  gm.serialize(p);
  vm.serialize(p);
  rans::Encoder enc;
  enc.push(gm, 3);
  enc.push(vm, 0);
  auto stream = enc.finish();
  rans::put_varint(p, stream.size());
  p.insert(p.end(), stream.begin(), stream.end());
  rans::put_varint(p, 1);
  p.push_back(std::byte{1});  // mantissa bits "01" -> gap 4 | 1 = 5
  rans::put_varint(p, 0);
  const std::vector<std::byte> base(8000);
  const Status st = native_decode(DType::kBF16, 4000, 1, p, base).status();
  EXPECT_EQ(st.code(), ErrorCode::kDecode) << st.to_string();
  EXPECT_NE(st.message().find("unchanged"), std::string::npos) << st.to_string();
}

// ---- encoding in two halves: symbolize_changes (the GPU's reference) + encode_symbols ----

struct TrackedCase {
  DType dtype;
  uint64_t numel;
  std::vector<uint64_t> positions;
  std::vector<std::byte> base_values, target_values;
};

TrackedCase tracked_case(std::mt19937_64& rng, DType dt, uint64_t numel, double density) {
  auto base = test::random_tensor(rng, "t", dt, {numel});
  auto next = test::mutate(rng, base, density);
  const size_t w = dtype_size_bytes(dt);
  TrackedCase c{dt, numel, *diff_elements(base.bytes, next.bytes, w, 1), {}, {}};
  for (uint64_t p : c.positions) {
    c.base_values.insert(c.base_values.end(), base.bytes.begin() + p * w, base.bytes.begin() + (p + 1) * w);
    c.target_values.insert(c.target_values.end(), next.bytes.begin() + p * w, next.bytes.begin() + (p + 1) * w);
  }
  return c;
}

// Both halves together write exactly encode_changes's payload: every dtype, densities that pick gaps and
// bitmap, random bit patterns (so escapes, NaN and ±0), and gaps of every bit length up to 64.
TEST(NativeSymbols, BothHalvesWriteEncodeChangesPayloadByteForByte) {
  std::mt19937_64 rng(81);
  std::vector<TrackedCase> cases;
  for (DType dt : kAllDTypes) {
    for (double density : {1e-3, 0.05, 0.3, 1.0}) {
      for (uint64_t numel : {1ull, 9ull, 6000ull}) cases.push_back(tracked_case(rng, dt, numel, density));
    }
  }
  // Gaps of every length: positions alone (no tensor is read), in a tensor of up to 2^64 - 1 elements.
  TrackedCase wide{DType::kBF16, ~0ull, {}, {}, {}};
  uint64_t p = 0;
  for (uint32_t len = 0; len <= 63; ++len) {
    wide.positions.push_back(p);
    p += (len == 0 ? 0 : (1ull << (len - 1)) | (rng() & ((1ull << (len - 1)) - 1))) + 1;
  }
  wide.positions.push_back(~0ull - 1);
  for (size_t i = 0; i < wide.positions.size(); ++i) {
    const uint16_t b = static_cast<uint16_t>(rng()), t = static_cast<uint16_t>(b ^ (1u + rng() % 0xFFFF));
    wide.base_values.insert(wide.base_values.end(), {std::byte(b & 0xFF), std::byte(b >> 8)});
    wide.target_values.insert(wide.target_values.end(), {std::byte(t & 0xFF), std::byte(t >> 8)});
  }
  cases.push_back(wide);
  uint64_t escapes = 0, bitmaps = 0;
  for (const TrackedCase& c : cases) {
    const std::string what = std::string(dtype_name(c.dtype)) + " numel " + std::to_string(c.numel) + " changes " + std::to_string(c.positions.size());
    auto expected = codec::native::encode_changes(c.dtype, c.numel, c.positions, c.base_values, c.target_values);
    ASSERT_TRUE(expected.ok()) << what << ": " << expected.status().to_string();
    auto symbols = codec::native::symbolize_changes(c.dtype, c.numel, c.positions, c.base_values, c.target_values);
    ASSERT_TRUE(symbols.ok()) << what << ": " << symbols.status().to_string();
    ASSERT_EQ(symbols->values.size(), c.positions.size()) << what;
    escapes += symbols->escapes.size();
    auto payload = codec::native::encode_symbols(c.dtype, c.numel, *symbols);
    ASSERT_TRUE(payload.ok()) << what << ": " << payload.status().to_string();
    ASSERT_EQ(*payload, *expected) << what;
    if (!payload->empty() && static_cast<Layout>((*payload)[0]) == Layout::kBitmap) ++bitmaps;
  }
  EXPECT_GT(escapes, 0u);  // the cases exercise escapes
  EXPECT_GT(bitmaps, 0u);  // and positions rebuilt from the gaps for the bitmap
}

// The CPU half refuses what encode_changes's callers must never pass, by name: value arrays of the wrong
// size, positions out of order or past the tensor.
TEST(NativeSymbols, SymbolizeRefusesBadChangesByName) {
  const std::vector<std::byte> two(4, std::byte{1}), three(6, std::byte{2});
  auto refused = [&](Result<codec::native::ChangeSymbols> r, const std::string& says) {
    ASSERT_FALSE(r.ok()) << says;
    EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument) << says;
    EXPECT_NE(r.status().message().find(says), std::string::npos) << r.status().to_string();
  };
  const std::vector<uint64_t> ok{3, 7};
  refused(codec::native::symbolize_changes(DType::kU16, 10, ok, two, three), "2 positions need 4 bytes of base and target values each, got 4 and 6");
  refused(codec::native::symbolize_changes(DType::kU16, 10, std::vector<uint64_t>{7, 3}, two, two), "position 3 (change 1) is not ascending");
  refused(codec::native::symbolize_changes(DType::kU16, 10, std::vector<uint64_t>{3, 3}, two, two), "position 3 (change 1) is not ascending");
  refused(codec::native::symbolize_changes(DType::kU16, 7, ok, two, two), "position 7 (change 1) is not ascending within 7 elements");
  EXPECT_EQ(codec::native::encode_changes(DType::kU16, 10, ok, two, three).status().code(), ErrorCode::kInvalidArgument);
}

// encode_symbols takes what a GPU computed: every inconsistency is refused by name, nothing is coded.
TEST(NativeSymbols, InconsistentSymbolsAreRefusedByName) {
  std::mt19937_64 rng(82);
  TrackedCase c = tracked_case(rng, DType::kBF16, 4000, 0.05);
  // Force one escape and gaps with mantissas.
  c.target_values[0] = c.base_values[0] ^ std::byte{0x7F};
  c.target_values[1] = c.base_values[1] ^ std::byte{0x40};
  auto good = *codec::native::symbolize_changes(c.dtype, c.numel, c.positions, c.base_values, c.target_values);
  ASSERT_FALSE(good.escapes.empty());
  ASSERT_FALSE(good.mantissas.empty());
  ASSERT_TRUE(codec::native::encode_symbols(c.dtype, c.numel, good).ok());
  auto refused = [&](const codec::native::ChangeSymbols& s, const std::string& says, uint64_t numel = 4000) {
    auto r = codec::native::encode_symbols(DType::kBF16, numel, s);
    ASSERT_FALSE(r.ok()) << says;
    EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument) << says;
    EXPECT_NE(r.status().message().find(says), std::string::npos) << r.status().to_string();
  };
  auto s = good;
  s.gap_lengths.pop_back();
  refused(s, "gap lengths");
  s = good;
  s.gap_lengths[3] = 65;
  refused(s, "gap length 65");
  s = good;
  s.values[2] = 0;
  refused(s, "change 2 has value symbol 0");
  s = good;
  s.escapes.push_back(1);
  refused(s, "escapes for");
  s = good;
  s.escapes.clear();
  refused(s, "more escaped values");
  s = good;
  s.escapes[0] = 0xFFFF;  // z = 0xFFFF + 255 does not fit 16 bits
  refused(s, "largest distance");
  s = good;
  s.mantissas.pop_back();
  refused(s, "ends at change");
  s = good;
  s.mantissas.push_back(std::byte{0});
  refused(s, "bits the gaps do not use");
  refused(good, "past the tensor", c.positions.back());  // the last change lands on numel
  s = good;
  s.gap_lengths[0] = 64;  // a first gap of >= 2^63 would need 63 mantissa bits more than the section holds
  refused(s, "past the tensor");
}

}  // namespace
}  // namespace dws
