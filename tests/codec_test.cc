// Codec-level property tests: encode then decode reproduces exactly the changed positions and values,
// for every encoding, dtype and density; decoders refuse malformed payloads.
#include <gtest/gtest.h>

#include "codec/codecs.h"
#include "dws/diff.h"
#include "test_util.h"

namespace dws {
namespace {

using test::views_of;

using test::Decoded;

Result<Decoded> decode(const codec::EncodedTensor& e, DType dtype, uint64_t numel, std::span<const std::byte> base) {
  Decoded out;
  Status st = codec::decode_changes({e.encoding, dtype, numel, e.changes, e.index_dtype}, views_of(e), base, out.sink());
  if (!st.ok()) return st;
  return out;
}

TEST(Codec, EveryEncodingRoundTripsEveryDtypeAndDensity) {
  std::mt19937_64 rng(21);
  for (DType dt : kAllDTypes) {
    for (double density : {1e-6, 0.01, 0.5, 1.0}) {
      for (uint64_t numel : {1ull, 7ull, 1000ull, 70000ull}) {
        auto base = test::random_tensor(rng, "t", dt, {numel});
        auto next = test::mutate(rng, base, density);
        auto positions = diff_elements(base.bytes, next.bytes, dtype_size_bytes(dt), 1);
        ASSERT_TRUE(positions.ok());
        if (positions->empty()) continue;
        for (Encoding enc : test::kPatchEncodings) {
          auto e = codec::encode_tensor(enc, {dt, base.bytes, next.bytes, *positions}, base.shape, {});
          ASSERT_TRUE(e.ok()) << e.status().to_string();
          if (e->encoding == Encoding::kFull) {  // auto may choose the whole tensor: it must be the target
            ASSERT_EQ(enc, Encoding::kAuto);
            EXPECT_EQ(e->payloads[0].bytes, next.bytes);
            continue;
          }
          auto d = decode(*e, dt, numel, base.bytes);
          ASSERT_TRUE(d.ok()) << encoding_name(enc) << " " << dtype_name(dt) << ": " << d.status().to_string();
          ASSERT_EQ(d->positions, *positions) << encoding_name(enc) << " " << dtype_name(dt) << " density " << density;
          const size_t w = dtype_size_bytes(dt);
          for (size_t i = 0; i < d->positions.size(); ++i) {
            ASSERT_EQ(std::memcmp(d->values.data() + i * w, next.bytes.data() + d->positions[i] * w, w), 0);
          }
        }
      }
    }
  }
}

TEST(Codec, AutoNeverLosesToTheFormsItConsiders) {
  std::mt19937_64 rng(24);
  for (double density : {0.001, 0.02, 0.3, 1.0, -1.0}) {
    auto base = test::random_tensor(rng, "t", DType::kBF16, {50000});
    // -1: an unrelated random tensor (every value jumps arbitrarily far).
    auto next = density < 0 ? test::random_tensor(rng, "t", DType::kBF16, {50000}) : test::mutate(rng, base, density);
    auto positions = *diff_elements(base.bytes, next.bytes, 2, 1);
    codec::EncodeInput in{DType::kBF16, base.bytes, next.bytes, positions};
    auto size = [&](Encoding e) {
      auto r = codec::encode_tensor(e, in, base.shape, {});
      EXPECT_TRUE(r.ok());
      uint64_t n = 0;
      for (const auto& p : r->payloads) n += p.bytes.size();
      return n;
    };
    const uint64_t chosen = size(Encoding::kAuto);
    EXPECT_LE(chosen, size(Encoding::kNative)) << density;
    const double actual = static_cast<double>(positions.size()) / 50000.0;
    if (actual >= codec::kAutoDenseMinDensity) EXPECT_LE(chosen, size(Encoding::kXorZstd)) << density;
    if (actual >= codec::kAutoFullMinDensity) EXPECT_LE(chosen, size(Encoding::kFull)) << density;
    // An unrelated tensor: nothing beats shipping it whole.
    if (density < 0) EXPECT_EQ(chosen, size(Encoding::kFull));
  }
}

TEST(Codec, GapWidthFallsBackForLongGaps) {
  const uint64_t numel = 200000;
  std::vector<uint64_t> positions = {5, 70005, 199999};  // gap of 70000 does not fit in uint16
  std::vector<std::byte> base(numel), next(numel);
  for (uint64_t p : positions) next[p] = std::byte{1};
  auto e = codec::encode_tensor(Encoding::kGaps, {DType::kU8, base, next, positions}, std::vector<uint64_t>{numel}, {});
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->index_dtype, DType::kU32);
  auto d = decode(*e, DType::kU8, numel, base);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->positions, positions);
}

// Builds an indices payload by hand to feed decoders positions an encoder would never produce.
codec::EncodedTensor hand_indices(std::vector<int32_t> idx) {
  codec::EncodedTensor e;
  e.encoding = Encoding::kIndices;
  e.index_dtype = DType::kI32;
  e.changes = idx.size();
  std::vector<std::byte> ib(idx.size() * 4), vb(idx.size() * 2, std::byte{7});
  std::memcpy(ib.data(), idx.data(), ib.size());
  e.payloads.push_back({"idx", DType::kI32, {idx.size()}, ib});
  e.payloads.push_back({"val", DType::kBF16, {idx.size()}, vb});
  return e;
}

TEST(Codec, DecodersRefuseBadPositions) {
  std::vector<std::byte> base(2 * 10);
  EXPECT_EQ(decode(hand_indices({1, 10}), DType::kBF16, 10, base).status().code(), ErrorCode::kPositions);  // out of range
  EXPECT_EQ(decode(hand_indices({3, 2}), DType::kBF16, 10, base).status().code(), ErrorCode::kPositions);   // unsorted
  EXPECT_EQ(decode(hand_indices({2, 2}), DType::kBF16, 10, base).status().code(), ErrorCode::kPositions);   // duplicate
  EXPECT_EQ(decode(hand_indices({-1, 2}), DType::kBF16, 10, base).status().code(), ErrorCode::kPositions);  // negative
  EXPECT_TRUE(decode(hand_indices({0, 9}), DType::kBF16, 10, base).ok());
  // More changes than elements.
  auto many = hand_indices({0, 1, 2});
  EXPECT_EQ(decode(many, DType::kBF16, 2, base).status().code(), ErrorCode::kPatchMetadata);
}

TEST(Codec, ZstdDecodersRefuseWrongSizesAndGarbage) {
  std::mt19937_64 rng(22);
  auto base = test::random_tensor(rng, "t", DType::kBF16, {5000});
  auto next = test::mutate(rng, base, 0.05);
  auto positions = *diff_elements(base.bytes, next.bytes, 2, 1);
  for (Encoding enc : {Encoding::kGapsZstd, Encoding::kXorZstd}) {
    auto e = *codec::encode_tensor(enc, {DType::kBF16, base.bytes, next.bytes, positions}, base.shape, {});
    // A declared tensor of a different size than the frame holds.
    if (enc == Encoding::kXorZstd) {
      std::vector<std::byte> small_base(2 * 4000);
      EXPECT_EQ(decode(e, DType::kBF16, 4000, small_base).status().code(), ErrorCode::kDecode);
    } else {
      auto wrong = e;
      wrong.changes += 1;
      EXPECT_EQ(decode(wrong, DType::kBF16, 5000, base.bytes).status().code(), ErrorCode::kDecode);
    }
    // Garbage instead of a frame, and a truncated frame.
    auto garbage = e;
    for (auto& b : garbage.payloads[0].bytes) b = static_cast<std::byte>(rng());
    EXPECT_FALSE(decode(garbage, DType::kBF16, 5000, base.bytes).ok());
    auto truncated = e;
    truncated.payloads[0].bytes.resize(truncated.payloads[0].bytes.size() / 2);
    truncated.payloads[0].shape = {truncated.payloads[0].bytes.size()};
    EXPECT_EQ(decode(truncated, DType::kBF16, 5000, base.bytes).status().code(), ErrorCode::kDecode);
  }
}

TEST(Codec, XorZstdMismatchedChangeCountIsRefused) {
  std::mt19937_64 rng(23);
  auto base = test::random_tensor(rng, "t", DType::kF32, {999});
  auto next = test::mutate(rng, base, 0.1);
  auto positions = *diff_elements(base.bytes, next.bytes, 4, 1);
  auto e = *codec::encode_tensor(Encoding::kXorZstd, {DType::kF32, base.bytes, next.bytes, positions}, base.shape, {});
  e.changes -= 1;
  EXPECT_EQ(decode(e, DType::kF32, 999, base.bytes).status().code(), ErrorCode::kPatchMetadata);
  // Regression (fuzz_decode): the sink must never see more changes than declared, even transiently;
  // xor_zstd counted only after decoding everything, handing the sink up to every element meanwhile.
  for (uint64_t declared : {uint64_t{0}, uint64_t{1}, e.changes / 2}) {
    uint64_t seen = 0;
    std::vector<uint64_t> payload_shape{e.payloads[0].bytes.size()};
    const codec::PayloadView view{e.payloads[0].role, e.payloads[0].dtype, payload_shape, e.payloads[0].bytes};
    Status st = codec::decode_changes({Encoding::kXorZstd, DType::kF32, 999, declared, DType::kU8}, std::span(&view, 1), base.bytes,
                                      [&](std::span<const uint64_t> pos, std::span<const std::byte>) {
                                        seen += pos.size();
                                        return Status::Ok();
                                      });
    EXPECT_EQ(st.code(), ErrorCode::kPatchMetadata) << declared;
    EXPECT_LE(seen, declared);
  }
}

}  // namespace
}  // namespace dws
