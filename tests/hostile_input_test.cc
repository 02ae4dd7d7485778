// Hostile patches: every refusal leaves the target untouched (in place: byte-for-byte; -o: not created).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "patch/patch_internal.h"
#include "test_util.h"

namespace dws {
namespace {

using test::TempDir;

class HostilePatch : public ::testing::Test {
 protected:
  void SetUp() override {
    std::mt19937_64 rng(41);
    std::vector<test::HostTensor> base = {test::random_tensor(rng, "a", DType::kBF16, {300}),
                                          test::random_tensor(rng, "b", DType::kF32, {64}),
                                          test::random_tensor(rng, "c", DType::kU8, {17})};
    std::vector<test::HostTensor> next;
    for (const auto& t : base) next.push_back(test::mutate(rng, t, 0.05));
    next[0].bytes[0] ^= std::byte{1};  // make sure "a" has a change at position 0 and 1
    next[0].bytes[2] ^= std::byte{1};
    ASSERT_TRUE(test::write_tensors(dir_ / "base.safetensors", base, {{"step", "1"}}).ok());
    ASSERT_TRUE(test::write_tensors(dir_ / "next.safetensors", next, {{"step", "2"}}).ok());
    other_ = next;
    for (auto& t : other_) t.bytes[0] ^= std::byte{0x40};
    ASSERT_TRUE(test::write_tensors(dir_ / "other.safetensors", other_, {{"step", "9"}}).ok());
    base_bytes_ = test::read_bytes(dir_ / "base.safetensors");
  }

  std::vector<std::byte> make_patch(Encoding enc) {
    auto b = Checkpoint::open(dir_ / "base.safetensors");
    auto n = Checkpoint::open(dir_ / "next.safetensors");
    EXPECT_TRUE(create_patch(*b, *n, dir_ / "p.dwsp", {enc, 1, 1}).ok());
    return test::read_bytes(dir_ / "p.dwsp");
  }

  // Expects the patch bytes to be refused with `code` (or any code if nullopt) by both apply paths, with
  // the base untouched and no output created.
  void expect_refused(std::span<const std::byte> bytes, std::optional<ErrorCode> code, const std::string& what) {
    SCOPED_TRACE(what);
    auto patch = Patch::from_bytes(bytes);
    Status st;
    if (!patch.ok()) {
      st = patch.status();
    } else {
      std::filesystem::copy_file(dir_ / "base.safetensors", dir_ / "target.safetensors",
                                 std::filesystem::copy_options::overwrite_existing);
      auto r = apply_patch_in_place(dir_ / "target.safetensors", *patch, {1, false});
      ASSERT_FALSE(r.ok()) << "accepted in place";
      st = r.status();
      EXPECT_EQ(test::read_bytes(dir_ / "target.safetensors"), base_bytes_) << "in-place target modified";
      EXPECT_FALSE(std::filesystem::exists(journal_path_for(dir_ / "target.safetensors")));
      auto o = apply_patch(dir_ / "base.safetensors", *patch, dir_ / "out.safetensors", {1, false});
      ASSERT_FALSE(o.ok()) << "accepted to a new file";
      EXPECT_EQ(o.status().code(), st.code());
      EXPECT_FALSE(std::filesystem::exists(dir_ / "out.safetensors")) << "output created";
    }
    if (code) EXPECT_EQ(st.code(), *code) << st.to_string();
    EXPECT_FALSE(st.message().empty());
  }

  // Rewrites the patch with `edit` applied to its metadata document and payloads, with consistent
  // payload hashes and document digest: what a buggy or malicious writer could produce.
  std::vector<std::byte> craft(std::span<const std::byte> original,
                               const std::function<void(PatchHeader&, std::map<std::string, std::vector<std::byte>>&)>& edit,
                               bool rehash = true) {
    auto patch = Patch::from_bytes(original);
    EXPECT_TRUE(patch.ok());
    PatchHeader h = patch->header();
    std::map<std::string, std::vector<std::byte>> payloads;
    for (const auto& t : h.tensors) {
      for (size_t k = 0; k < t.payloads.size(); ++k) {
        auto b = patch->payload(t, k);
        payloads[t.payload_names[k]] = {b.begin(), b.end()};
      }
    }
    edit(h, payloads);
    std::vector<TensorWrite> writes;
    for (auto& t : h.tensors) {
      DigestStream s;
      for (size_t k = 0; k < t.payload_names.size(); ++k) {
        const auto& bytes = payloads[t.payload_names[k]];
        s.update(bytes);
        const TensorInfo* info = patch->container().find(t.payload_names[k]);
        std::vector<uint64_t> shape = info->shape;
        if (shape.size() == 1) shape[0] = bytes.size() / dtype_size_bytes(info->dtype);
        writes.push_back({{t.payload_names[k], info->dtype, shape}, bytes});
      }
      if (rehash) t.payload_hash = s.finish();
    }
    const std::string doc = patch_json::to_json(h);
    FileMetadata meta{{"dws.format", "dws-patch"},
                      {"dws.format_version", std::to_string(kPatchFormatVersion)},
                      {"dws.patch_digest", digest_hex(digest_bytes(std::as_bytes(std::span(doc.data(), doc.size()))))},
                      {"dws.patch", doc}};
    EXPECT_TRUE(write_safetensors(dir_ / "crafted.dwsp", writes, meta).ok());
    return test::read_bytes(dir_ / "crafted.dwsp");
  }

  TempDir dir_;
  std::vector<std::byte> base_bytes_;
  std::vector<test::HostTensor> other_;
};

template <typename T>
void poke(std::vector<std::byte>& bytes, size_t index, T value) {
  std::memcpy(bytes.data() + index * sizeof(T), &value, sizeof(T));
}
template <typename T>
T peek(const std::vector<std::byte>& bytes, size_t index) {
  T v;
  std::memcpy(&v, bytes.data() + index * sizeof(T), sizeof(T));
  return v;
}

TEST_F(HostilePatch, CraftedPatchesAreAcceptedWhenUnchanged) {
  // The crafting helper itself must produce a valid patch, or every test below proves nothing.
  auto original = make_patch(Encoding::kIndices);
  auto same = craft(original, [](PatchHeader&, auto&) {});
  auto patch = Patch::from_bytes(same);
  ASSERT_TRUE(patch.ok()) << patch.status().to_string();
  ASSERT_TRUE(apply_patch(dir_ / "base.safetensors", *patch, dir_ / "ok.safetensors", {}).ok());
  EXPECT_TRUE(test::same_tensors(dir_ / "ok.safetensors", dir_ / "next.safetensors"));
}

TEST_F(HostilePatch, PositionsOutOfRangeUnsortedOrDuplicate) {
  auto original = make_patch(Encoding::kIndices);
  expect_refused(craft(original, [](PatchHeader&, auto& p) { poke<int32_t>(p["a:idx"], 0, 300); }),
                 ErrorCode::kPositions, "index == numel");
  expect_refused(craft(original, [](PatchHeader&, auto& p) { poke<int32_t>(p["a:idx"], 0, INT32_MAX); }),
                 ErrorCode::kPositions, "index far out of range");
  expect_refused(craft(original, [](PatchHeader&, auto& p) { poke<int32_t>(p["a:idx"], 0, -5); }),
                 ErrorCode::kPositions, "negative index");
  expect_refused(craft(original, [](PatchHeader&, auto& p) {
                   auto first = peek<int32_t>(p["a:idx"], 0), second = peek<int32_t>(p["a:idx"], 1);
                   poke<int32_t>(p["a:idx"], 0, second);
                   poke<int32_t>(p["a:idx"], 1, first);
                 }),
                 ErrorCode::kPositions, "unsorted");
  expect_refused(craft(original, [](PatchHeader&, auto& p) { poke<int32_t>(p["a:idx"], 1, peek<int32_t>(p["a:idx"], 0)); }),
                 ErrorCode::kPositions, "duplicate");
  auto gaps = make_patch(Encoding::kGaps);
  expect_refused(craft(gaps, [](PatchHeader&, auto& p) { poke<uint16_t>(p["a:gaps"], 1, 0); }), ErrorCode::kPositions,
                 "zero gap");
  expect_refused(craft(gaps, [](PatchHeader&, auto& p) { poke<uint16_t>(p["a:gaps"], 1, 60000); }), ErrorCode::kPositions,
                 "gaps run past the end");
}

TEST_F(HostilePatch, InconsistentMetadata) {
  auto original = make_patch(Encoding::kIndices);
  expect_refused(craft(original, [](PatchHeader&, auto& p) { p["a:val"][0] ^= std::byte{1}; }, /*rehash=*/false),
                 ErrorCode::kPayloadHash, "payload changed, hash not");
  expect_refused(craft(original, [](PatchHeader& h, auto&) { h.tensors[0].changes += 1; }), ErrorCode::kPatchMetadata,
                 "change count larger than the payload");
  expect_refused(craft(original, [](PatchHeader& h, auto&) { h.tensors[0].target_digest.low ^= 1; }),
                 ErrorCode::kPatchMetadata, "tensor target digest disagrees with the state digest");
  expect_refused(craft(original, [](PatchHeader& h, auto& p) {
                   // Values changed and hashes redone, digests left: the result does not match the target.
                   p["a:val"][0] ^= std::byte{1};
                   (void)h;
                 }),
                 ErrorCode::kTargetMismatch, "values do not produce the recorded target");
  expect_refused(craft(original, [](PatchHeader& h, auto&) { h.target_layout.shards[0].tensors.pop_back(); }),
                 ErrorCode::kPatchMetadata, "layout drops a tensor");
  expect_refused(craft(original, [](PatchHeader& h, auto&) { h.target_layout.shards[0].file = "../escape"; }),
                 ErrorCode::kPatchMetadata, "layout file escapes");
  expect_refused(craft(original, [](PatchHeader& h, auto&) { h.format_version = kPatchFormatVersion + 1; }),
                 ErrorCode::kUnsupported, "future format version");
  expect_refused(craft(original, [](PatchHeader& h, auto&) { h.format_version = 1; }), ErrorCode::kUnsupported,
                 "format version 1 (XXH3-128 tensor digests) is no longer read");
  expect_refused(craft(original, [](PatchHeader& h, auto&) { h.tensors[0].encoding = Encoding::kAuto; }),
                 ErrorCode::kPatchMetadata, "'auto' claimed as a stored tensor encoding");
}

TEST_F(HostilePatch, WrongBaseIsRefusedByName) {
  auto original = make_patch(Encoding::kGapsZstd);
  auto patch = Patch::from_bytes(original);
  ASSERT_TRUE(patch.ok());
  const auto other_bytes = test::read_bytes(dir_ / "other.safetensors");
  auto r = apply_patch_in_place(dir_ / "other.safetensors", *patch, {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kBaseMismatch);
  EXPECT_NE(r.status().message().find("tensor 'a': base digest"), std::string::npos) << r.status().to_string();
  EXPECT_EQ(test::read_bytes(dir_ / "other.safetensors"), other_bytes);
  auto o = apply_patch(dir_ / "other.safetensors", *patch, dir_ / "out.safetensors", {});
  EXPECT_EQ(o.status().code(), ErrorCode::kBaseMismatch);
  EXPECT_FALSE(std::filesystem::exists(dir_ / "out.safetensors"));
  // Applying twice: the second time the base is already the target.
  std::filesystem::copy_file(dir_ / "base.safetensors", dir_ / "twice.safetensors");
  ASSERT_TRUE(apply_patch_in_place(dir_ / "twice.safetensors", *patch, {}).ok());
  EXPECT_EQ(apply_patch_in_place(dir_ / "twice.safetensors", *patch, {}).status().code(), ErrorCode::kBaseMismatch);
  EXPECT_TRUE(test::same_tensors(dir_ / "twice.safetensors", dir_ / "next.safetensors"));
}

TEST_F(HostilePatch, HugeHeaderLength) {
  auto bytes = make_patch(Encoding::kGaps);
  poke<uint64_t>(bytes, 0, 1ull << 62);
  expect_refused(bytes, ErrorCode::kHeaderSize, "huge header length");
}

TEST_F(HostilePatch, EveryTruncationIsRefused) {
  for (Encoding enc : test::kPatchEncodings) {
    auto bytes = make_patch(enc);
    for (size_t n = 0; n < bytes.size(); n += std::max<size_t>(1, bytes.size() / 500)) {
      expect_refused(std::span(bytes).first(n), std::nullopt, "truncated to " + std::to_string(n));
      if (HasFailure()) return;
    }
  }
}

TEST_F(HostilePatch, EverySingleBitFlipIsRefused) {
  for (Encoding enc : {Encoding::kIndices, Encoding::kGapsZstd, Encoding::kXorZstd, Encoding::kNative}) {
    const auto bytes = make_patch(enc);
    size_t tried = 0;
    for (size_t i = 0; i < bytes.size(); ++i) {
      for (int bit = 0; bit < 8; ++bit) {
        auto bad = bytes;
        bad[i] ^= static_cast<std::byte>(1 << bit);
        expect_refused(bad, std::nullopt, std::string(encoding_name(enc)) + ": byte " + std::to_string(i) + " bit " + std::to_string(bit));
        ++tried;
        if (HasFailure()) return;
      }
    }
    std::printf("[ info ] %s: %zu single-bit flips of a %zu-byte patch, all refused\n",
                std::string(encoding_name(enc)).c_str(), tried, bytes.size());
  }
}

TEST_F(HostilePatch, RandomMultiByteCorruptionsAreRefused) {
  // 10,000 corruptions of 2 to 9 random bytes each, spread over four encodings' patches: every one is
  // refused by both apply paths with the target untouched.
  std::mt19937_64 rng(42);
  size_t tried = 0;
  for (Encoding enc : {Encoding::kIndices, Encoding::kGapsZstd, Encoding::kXorZstd, Encoding::kNative}) {
    const auto bytes = make_patch(enc);
    for (int trial = 0; trial < 2500; ++trial) {
      auto bad = bytes;
      const int n = 2 + static_cast<int>(rng() % 8);
      for (int k = 0; k < n; ++k) bad[rng() % bad.size()] ^= static_cast<std::byte>(1 + rng() % 255);
      if (bad == bytes) continue;
      expect_refused(bad, std::nullopt, std::string(encoding_name(enc)) + " trial " + std::to_string(trial));
      ++tried;
      if (HasFailure()) return;
    }
  }
  EXPECT_GE(tried, 9990u);
  std::printf("[ info ] %zu random multi-byte corruptions, all refused, target untouched\n", tried);
}

}  // namespace
}  // namespace dws
