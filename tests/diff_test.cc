#include <gtest/gtest.h>

#include <bit>
#include <limits>

#include "dws/diff.h"
#include "test_util.h"

namespace dws {
namespace {

std::vector<uint64_t> naive_diff(std::span<const std::byte> a, std::span<const std::byte> b, size_t w) {
  std::vector<uint64_t> out;
  for (uint64_t i = 0; i < a.size() / w; ++i) {
    if (std::memcmp(a.data() + i * w, b.data() + i * w, w) != 0) out.push_back(i);
  }
  return out;
}

TEST(Diff, MatchesANaiveScanForEveryWidthDensityAndSize) {
  std::mt19937_64 rng(11);
  const size_t sizes_bytes[] = {0, 8, 63, 64, 65, 1000, (1u << 20) - 8, (1u << 20) + 24, 3u << 20};
  for (size_t w : {1, 2, 4, 8}) {
    for (size_t size : sizes_bytes) {
      size -= size % w;
      for (double density : {0.0, 1e-6, 0.004, 0.5, 1.0}) {
        std::vector<std::byte> a(size), b;
        for (auto& x : a) x = static_cast<std::byte>(rng());
        b = a;
        std::bernoulli_distribution pick(density);
        for (size_t i = 0; i < size / w; ++i) {
          if (pick(rng)) b[i * w + rng() % w] ^= static_cast<std::byte>(1 + rng() % 255);
        }
        auto expected = naive_diff(a, b, w);
        for (size_t threads : {1, 2, 3}) {
          auto got = diff_elements(a, b, w, threads);
          ASSERT_TRUE(got.ok());
          ASSERT_EQ(*got, expected) << "w=" << w << " size=" << size << " density=" << density << " threads=" << threads;
        }
      }
    }
  }
}

TEST(Diff, ComparesBitPatternsNotValues) {
  const float nan_a = std::bit_cast<float>(0x7FC00000u);
  const float nan_b = std::bit_cast<float>(0x7FC00001u);
  std::vector<float> base = {0.0f, nan_a, nan_a, 1.0f, -0.0f};
  std::vector<float> next = {-0.0f, nan_a, nan_b, 1.0f, -0.0f};
  auto got = diff_elements(std::as_bytes(std::span(base)), std::as_bytes(std::span(next)), 4, 1);
  ASSERT_TRUE(got.ok());
  // +0.0 -> -0.0 is a change; the same NaN is not; a different NaN payload is.
  EXPECT_EQ(*got, (std::vector<uint64_t>{0, 2}));
}

TEST(Diff, RefusesMismatchedBuffers) {
  std::vector<std::byte> a(8), b(10);
  EXPECT_EQ(diff_elements(a, b, 2, 1).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(diff_elements(a, a, 3, 1).status().code(), ErrorCode::kInvalidArgument);
  std::vector<std::byte> odd(7);
  EXPECT_EQ(diff_elements(odd, odd, 2, 1).status().code(), ErrorCode::kInvalidArgument);
}

TEST(Diff, ClassifiesTensorChanges) {
  test::TempDir dir;
  std::mt19937_64 rng(12);
  auto same = test::random_tensor(rng, "same", DType::kBF16, {16});
  auto mod = test::random_tensor(rng, "mod", DType::kF32, {100});
  auto gone = test::random_tensor(rng, "gone", DType::kU8, {3});
  auto reshaped = test::random_tensor(rng, "reshaped", DType::kBF16, {4, 4});
  auto retyped = test::random_tensor(rng, "retyped", DType::kBF16, {8});
  ASSERT_TRUE(test::write_tensors(dir / "a.safetensors", {same, mod, gone, reshaped, retyped}).ok());
  auto mod2 = mod;
  mod2.bytes[4 * 37] ^= std::byte{0x80};
  auto reshaped2 = reshaped;
  reshaped2.shape = {2, 8};
  auto retyped2 = retyped;
  retyped2.dtype = DType::kF16;
  auto added = test::random_tensor(rng, "added", DType::kI32, {2});
  ASSERT_TRUE(test::write_tensors(dir / "b.safetensors", {same, mod2, reshaped2, retyped2, added}).ok());
  auto a = Checkpoint::open(dir / "a.safetensors");
  auto b = Checkpoint::open(dir / "b.safetensors");
  ASSERT_TRUE(a.ok() && b.ok());
  auto diffs = diff_checkpoints(*a, *b, 2);
  std::map<std::string, TensorDiff*> by_name;
  for (auto& d : diffs) by_name[d.name] = &d;
  ASSERT_EQ(by_name.size(), 6u);
  EXPECT_EQ(by_name["same"]->change, TensorChange::kUnchanged);
  EXPECT_EQ(by_name["mod"]->change, TensorChange::kModified);
  EXPECT_EQ(by_name["mod"]->positions, (std::vector<uint64_t>{37}));
  EXPECT_EQ(by_name["gone"]->change, TensorChange::kRemoved);
  EXPECT_EQ(by_name["reshaped"]->change, TensorChange::kReplaced);
  EXPECT_EQ(by_name["retyped"]->change, TensorChange::kReplaced);
  EXPECT_EQ(by_name["added"]->change, TensorChange::kAdded);
}

}  // namespace
}  // namespace dws
