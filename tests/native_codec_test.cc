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
  // Frequencies not summing to 4096, symbols out of order or outside the alphabet.
  std::vector<std::byte> t;
  rans::put_varint(t, 2);
  t.push_back(std::byte{3});
  rans::put_varint(t, 2000);
  t.push_back(std::byte{1});  // descending
  rans::put_varint(t, 2096);
  size_t at = 0;
  EXPECT_FALSE(rans::Model::parse(t, &at, 256).ok());
  std::vector<std::byte> u;
  rans::put_varint(u, 1);
  u.push_back(std::byte{70});
  rans::put_varint(u, 4096);
  at = 0;
  EXPECT_FALSE(rans::Model::parse(u, &at, 65).ok());
  at = 0;
  EXPECT_TRUE(rans::Model::parse(u, &at, 256).ok());
}

class NativeDecode : public ::testing::Test {
 protected:
  void SetUp() override {
    std::mt19937_64 rng(72);
    base_ = test::random_tensor(rng, "t", DType::kBF16, {4000});
    next_ = test::mutate(rng, base_, 0.02);
    positions_ = *diff_elements(base_.bytes, next_.bytes, 2, 1);
    payload_ = *codec::native::encode(DType::kBF16, base_.bytes, next_.bytes, positions_);
  }
  Status decode(std::span<const std::byte> payload, uint64_t changes) {
    return codec::native::decode(DType::kBF16, 4000, changes, payload, base_.bytes,
                                 [](std::span<const uint64_t>, std::span<const std::byte>) { return Status::Ok(); });
  }
  test::HostTensor base_, next_;
  std::vector<uint64_t> positions_;
  std::vector<std::byte> payload_;
};

TEST_F(NativeDecode, AcceptsItsOwnPayloadAndRefusesDamagedOnes) {
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
  std::printf("[ info ] native: %zu of %zu single-bit flips refused by the decoder alone\n", refused, payload_.size());
}

TEST_F(NativeDecode, RefusesAnUnchangedValue) {
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
  const Status st = decode(p, 1);
  EXPECT_EQ(st.code(), ErrorCode::kDecode) << st.to_string();
  EXPECT_NE(st.message().find("unchanged"), std::string::npos) << st.to_string();
}

}  // namespace
}  // namespace dws
