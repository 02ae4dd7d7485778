// The additive tensor digest (dws/digest.h): definition, parallel chunking, O(changes) updates, binding.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <set>

#include "dws/checkpoint.h"
#include "dws/digest.h"
#include "test_util.h"

namespace dws {
namespace {

std::vector<std::byte> random_bytes(std::mt19937_64& rng, size_t n) {
  std::vector<std::byte> out(n);
  for (auto& b : out) b = static_cast<std::byte>(rng());
  return out;
}

// The definition, spelled out word by word: seed term plus one word hash per zero-padded 8-byte word.
Digest128 reference_digest(const TensorSeed& seed, std::span<const std::byte> bytes) {
  Digest128 sum = seed.term;
  for (size_t at = 0; at < bytes.size(); at += 8) {
    uint64_t w = 0;
    std::memcpy(&w, bytes.data() + at, std::min<size_t>(8, bytes.size() - at));
    sum = digest_add(sum, word_digest(seed, at / 8, w));
  }
  return sum;
}

TEST(TensorDigest, MatchesItsWordByWordDefinitionForEverySize) {
  std::mt19937_64 rng(1);
  const std::vector<uint64_t> shape = {1};
  const TensorSeed seed = tensor_seed("w", DType::kU8, shape);
  for (size_t n : {0, 1, 7, 8, 9, 31, 32, 33, 63, 64, 65, 1000}) {
    auto bytes = random_bytes(rng, n);
    EXPECT_EQ(digest_add(seed.term, words_digest(seed, bytes, 0)), reference_digest(seed, bytes)) << n << " bytes";
    // Any split at a word boundary adds up to the whole.
    for (size_t cut = 0; cut <= n; cut += 8) {
      const Digest128 parts = digest_add(words_digest(seed, std::span(bytes).first(cut), 0),
                                         words_digest(seed, std::span(bytes).subspan(cut), cut / 8));
      EXPECT_EQ(digest_add(seed.term, parts), reference_digest(seed, bytes)) << n << " bytes cut at " << cut;
    }
  }
}

TEST(TensorDigest, BindsNameDtypeShapeAndPosition) {
  std::vector<std::byte> bytes(64, std::byte{0});
  bytes[3] = std::byte{1};
  const std::vector<uint64_t> s32 = {32}, s2x16 = {2, 16}, s16 = {16};
  std::set<std::pair<uint64_t, uint64_t>> seen;
  auto add = [&](const Digest128& d) { return seen.insert({d.high, d.low}).second; };
  EXPECT_TRUE(add(tensor_digest("a", DType::kBF16, s32, bytes)));
  EXPECT_TRUE(add(tensor_digest("b", DType::kBF16, s32, bytes)));
  EXPECT_TRUE(add(tensor_digest("a", DType::kF16, s32, bytes)));
  EXPECT_TRUE(add(tensor_digest("a", DType::kBF16, s2x16, bytes)));
  EXPECT_TRUE(add(tensor_digest("a", DType::kF32, s16, bytes)));
  std::swap(bytes[3], bytes[11]);  // same multiset of bytes, another word
  EXPECT_TRUE(add(tensor_digest("a", DType::kBF16, s32, bytes)));
  // An empty tensor still counts, and differs by name.
  EXPECT_TRUE(add(tensor_digest("a", DType::kBF16, {}, {})));
  EXPECT_TRUE(add(tensor_digest("b", DType::kBF16, {}, {})));
}

TEST(TensorDigest, EverySingleWordChangeChangesBothLanes) {
  // The word hash is a bijection of the word for a fixed index in each lane: no single change cancels.
  std::mt19937_64 rng(2);
  const TensorSeed seed = tensor_seed("w", DType::kBF16, std::vector<uint64_t>{4});
  for (int i = 0; i < 100000; ++i) {
    const uint64_t index = rng() % 1000000, a = rng();
    const uint64_t b = i % 2 ? a ^ (1ull << (rng() % 64)) : rng();  // one flipped bit, or any other word
    if (a == b) continue;
    const Digest128 da = word_digest(seed, index, a), db = word_digest(seed, index, b);
    ASSERT_NE(da.high, db.high);
    ASSERT_NE(da.low, db.low);
  }
}

TEST(TensorDigest, DeltaOfChangesEqualsTheDigestOfTheResult) {
  std::mt19937_64 rng(3);
  for (size_t width : {1, 2, 4, 8}) {
    for (size_t numel : {1, 3, 4, 5, 17, 1000, 4099}) {
      for (double density : {0.001, 0.05, 0.5, 1.0}) {
        const std::vector<uint64_t> shape = {numel};
        const TensorSeed seed = tensor_seed("t", DType::kU8, shape);
        auto before = random_bytes(rng, numel * width);
        std::vector<uint64_t> positions;
        for (uint64_t p = 0; p < numel; ++p) {
          if (std::uniform_real_distribution<double>(0, 1)(rng) < density) positions.push_back(p);
        }
        auto values = random_bytes(rng, positions.size() * width);
        TensorDigestDelta delta(seed, before, width);
        for (size_t i = 0; i < positions.size(); ++i) delta.set(positions[i], values.data() + i * width);
        auto after = before;
        for (size_t i = 0; i < positions.size(); ++i) std::memcpy(after.data() + positions[i] * width, values.data() + i * width, width);
        EXPECT_EQ(digest_add(reference_digest(seed, before), delta.delta()), reference_digest(seed, after))
            << "width " << width << " numel " << numel << " density " << density;
      }
    }
  }
}

TEST(TensorDigest, ChunkedParallelDigestsMatchTheWholeTensor) {
  // tensor_digests splits big tensors (8 MiB chunks) across threads; the sum must not depend on it.
  test::TempDir dir;
  std::mt19937_64 rng(4);
  std::vector<test::HostTensor> tensors;
  tensors.push_back(test::random_tensor(rng, "big", DType::kBF16, {4099, 2051}));  // ~16.8 MB: 3 chunks
  tensors.push_back(test::random_tensor(rng, "odd", DType::kU8, {13}));
  tensors.push_back(test::random_tensor(rng, "empty", DType::kF32, {0, 4}));
  ASSERT_TRUE(test::write_tensors(dir / "m.safetensors", tensors).ok());
  auto cp = Checkpoint::open(dir / "m.safetensors");
  ASSERT_TRUE(cp.ok());
  for (size_t threads : {1, 3, 8}) {
    auto digests = tensor_digests(*cp, threads);
    for (size_t i = 0; i < cp->tensors().size(); ++i) {
      const auto& t = cp->tensors()[i];
      EXPECT_EQ(digests[i], tensor_digest(t.name, t.dtype, t.shape, cp->bytes(t))) << t.name << " threads " << threads;
    }
    Digest128 sum;
    for (const auto& d : digests) sum = digest_add(sum, d);
    EXPECT_EQ(state_digest(digests), sum);
  }
}

}  // namespace
}  // namespace dws
