// Property tests of the whole path: create_patch -> apply (to a new file and in place) reproduces the
// target exactly, for random checkpoints of every dtype, density and shape (empty and 0-d included),
// with and without structural changes, single-file and sharded.
#include <gtest/gtest.h>

#include "test_util.h"

namespace dws {
namespace {

using test::HostTensor;
using test::TempDir;

std::vector<HostTensor> random_checkpoint(std::mt19937_64& rng, DType dt) {
  return {test::random_tensor(rng, "layer.0.weight", dt, {37, 29}),
          test::random_tensor(rng, "layer.0.bias", dt, {29}),
          test::random_tensor(rng, "scalar", dt, {}),
          test::random_tensor(rng, "empty", dt, {0, 4}),
          test::random_tensor(rng, "big", dt, {70001})};
}

std::vector<HostTensor> mutate_all(std::mt19937_64& rng, const std::vector<HostTensor>& base, double density) {
  std::vector<HostTensor> out;
  for (const auto& t : base) out.push_back(test::mutate(rng, t, density));
  return out;
}

void copy_file(const std::string& from, const std::string& to) {
  std::filesystem::copy(from, to, std::filesystem::copy_options::recursive | std::filesystem::copy_options::overwrite_existing);
}

TensorDigests digests_of(const std::string& path) {
  auto cp = Checkpoint::open(path);
  EXPECT_TRUE(cp.ok());
  return tensor_digests_by_name(*cp, tensor_digests(*cp, 2));
}

// diff -> apply -o -> compare; diff -> apply --in-place on a copy -> compare.
void check_round_trip(const std::string& base, const std::string& next, Encoding enc, const std::string& work,
                      bool expect_rewrite = false) {
  SCOPED_TRACE(std::string(encoding_name(enc)) + " " + base + " -> " + next);
  auto b = Checkpoint::open(base);
  auto n = Checkpoint::open(next);
  ASSERT_TRUE(b.ok() && n.ok());
  const std::string patch_path = work + "/p.dwsp";
  auto stats = create_patch(*b, *n, patch_path, {enc, 2, 1});
  ASSERT_TRUE(stats.ok()) << stats.status().to_string();
  auto patch = Patch::open(patch_path);
  ASSERT_TRUE(patch.ok()) << patch.status().to_string();
  ASSERT_TRUE(patch->verify(2).ok());

  const std::string out = work + "/out";
  std::filesystem::remove_all(out);
  auto applied = apply_patch(base, *patch, out, {2, false});
  ASSERT_TRUE(applied.ok()) << applied.status().to_string();
  EXPECT_TRUE(test::same_tensors(out, next));

  const std::string copy = work + "/inplace";
  std::filesystem::remove_all(copy);
  copy_file(base, copy);
  auto in_place = apply_patch_in_place(copy, *patch, {1, false});
  ASSERT_TRUE(in_place.ok()) << in_place.status().to_string();
  EXPECT_EQ(in_place->rewrote_files, expect_rewrite);
  EXPECT_TRUE(test::same_tensors(copy, next));
  EXPECT_FALSE(std::filesystem::exists(journal_path_for(copy))) << "journal must be gone after a successful apply";
  // The target digests the apply reports (derived in O(changes)) describe the bytes it wrote.
  EXPECT_EQ(in_place->target_digests, digests_of(copy));
  EXPECT_EQ(applied->target_digests, digests_of(copy));

  // With the base's digests known, as dws pull runs it: same result, same digests, no rescan needed.
  const TensorDigests base_digests = digests_of(base);
  std::filesystem::remove_all(copy);
  copy_file(base, copy);
  auto known = apply_patch_in_place(copy, *patch, {1, false, &base_digests});
  ASSERT_TRUE(known.ok()) << known.status().to_string();
  EXPECT_TRUE(test::same_tensors(copy, next));
  EXPECT_EQ(known->target_digests, in_place->target_digests);

  // create_patch with the base digests supplied writes the same bytes.
  CreatePatchOptions with_digests{enc, 2, 1};
  with_digests.base_digests = &base_digests;
  ASSERT_TRUE(create_patch(*b, *n, work + "/p2.dwsp", with_digests).ok());
  EXPECT_EQ(test::read_bytes(patch_path), test::read_bytes(work + "/p2.dwsp"));
}

class RoundTrip : public ::testing::TestWithParam<std::tuple<DType, double>> {};

TEST_P(RoundTrip, EveryEncodingReproducesTheTarget) {
  const auto [dt, density] = GetParam();
  TempDir dir;
  std::mt19937_64 rng(static_cast<uint64_t>(dt) * 1000 + static_cast<uint64_t>(density * 1e6));
  auto base = random_checkpoint(rng, dt);
  auto next = mutate_all(rng, base, density);
  ASSERT_TRUE(test::write_tensors(dir / "base.safetensors", base, {{"step", "1"}}).ok());
  ASSERT_TRUE(test::write_tensors(dir / "next.safetensors", next, {{"step", "2"}}).ok());
  for (Encoding enc : test::kPatchEncodings) check_round_trip(dir / "base.safetensors", dir / "next.safetensors", enc, dir.path());
}

INSTANTIATE_TEST_SUITE_P(AllDtypesAndDensities, RoundTrip,
                         ::testing::Combine(::testing::ValuesIn(kAllDTypes), ::testing::Values(0.0, 1e-6, 0.01, 0.5, 1.0)),
                         [](const auto& info) {
                           std::string d = std::to_string(std::get<1>(info.param));
                           for (char& c : d) if (c == '.') c = '_';
                           return std::string(dtype_name(std::get<0>(info.param))) + "_density_" + d;
                         });

TEST(RoundTrip, StructuralChangesAreCarriedWhole) {
  TempDir dir;
  std::mt19937_64 rng(31);
  auto base = random_checkpoint(rng, DType::kBF16);
  auto next = mutate_all(rng, base, 0.01);
  next.erase(next.begin() + 1);                          // removed: layer.0.bias
  next[0].shape = {29, 37};                              // replaced: same bytes, new shape
  next[1].dtype = DType::kI16;                           // replaced: new dtype (scalar)
  next.push_back(test::random_tensor(rng, "added", DType::kF32, {11}));
  ASSERT_TRUE(test::write_tensors(dir / "base.safetensors", base).ok());
  ASSERT_TRUE(test::write_tensors(dir / "next.safetensors", next).ok());
  for (Encoding enc : test::kPatchEncodings) {
    check_round_trip(dir / "base.safetensors", dir / "next.safetensors", enc, dir.path(), /*expect_rewrite=*/true);
  }
}

TEST(RoundTrip, ShardedDirectories) {
  TempDir dir;
  std::mt19937_64 rng(32);
  auto base = random_checkpoint(rng, DType::kBF16);
  auto next = mutate_all(rng, base, 0.02);
  test::write_sharded(dir / "base", base, 3);
  test::write_sharded(dir / "next", next, 3);
  for (Encoding enc : test::kPatchEncodings) check_round_trip(dir / "base", dir / "next", enc, dir.path());
  // Re-sharding (3 files -> 2) changes the layout: in place rewrites and swaps the directory.
  test::write_sharded(dir / "next2", next, 2);
  check_round_trip(dir / "base", dir / "next2", Encoding::kGaps, dir.path(), /*expect_rewrite=*/true);
  auto out = Checkpoint::open(dir / "inplace");
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->shard_count(), 2u);
}

TEST(RoundTrip, FileMetadataFollowsTheTarget) {
  TempDir dir;
  std::mt19937_64 rng(33);
  auto base = random_checkpoint(rng, DType::kF16);
  auto next = mutate_all(rng, base, 0.01);
  ASSERT_TRUE(test::write_tensors(dir / "base.safetensors", base, {{"step", "007"}}).ok());
  ASSERT_TRUE(test::write_tensors(dir / "same_len.safetensors", next, {{"step", "008"}}).ok());
  // Same header length: patched through the journal, header included.
  check_round_trip(dir / "base.safetensors", dir / "same_len.safetensors", Encoding::kGapsZstd, dir.path());
  auto f = SafetensorsFile::open(dir / "inplace");
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->header().metadata.at("step"), "008");
  // A header that no longer fits: the file is rewritten.
  ASSERT_TRUE(test::write_tensors(dir / "longer.safetensors", next, {{"step", "008"}, {"note", std::string(300, 'x')}}).ok());
  check_round_trip(dir / "base.safetensors", dir / "longer.safetensors", Encoding::kGapsZstd, dir.path(), /*expect_rewrite=*/true);
  auto g = SafetensorsFile::open(dir / "inplace");
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->header().metadata.at("note").size(), 300u);
}

TEST(RoundTrip, WithKnownBaseDigestsTheApplyReadsOnlyWhatChanges) {
  // The contract of ApplyOptions::base_digests: the caller vouches for the base, so a tensor the patch
  // does not touch is never read. Corrupting one behind the caller's back shows it: the known-digest
  // apply goes through (and carries the corruption), the rescanning apply refuses.
  TempDir dir;
  std::mt19937_64 rng(9);
  auto base = random_checkpoint(rng, DType::kBF16);
  auto next = base;
  next[0] = test::mutate(rng, base[0], 0.01);  // only layer.0.weight changes
  ASSERT_TRUE(test::write_tensors(dir / "base.safetensors", base).ok());
  ASSERT_TRUE(test::write_tensors(dir / "next.safetensors", next).ok());
  auto b = Checkpoint::open(dir / "base.safetensors");
  auto n = Checkpoint::open(dir / "next.safetensors");
  ASSERT_TRUE(b.ok() && n.ok());
  ASSERT_TRUE(create_patch(*b, *n, dir / "p.dwsp", {Encoding::kNative, 1, 1}).ok());
  auto patch = Patch::open(dir / "p.dwsp");
  ASSERT_TRUE(patch.ok());
  const TensorDigests digests = digests_of(dir / "base.safetensors");

  base[4].bytes[100] ^= std::byte{1};  // "big", untouched by the patch
  ASSERT_TRUE(test::write_tensors(dir / "corrupt.safetensors", base).ok());
  copy_file(dir / "corrupt.safetensors", dir / "a.safetensors");
  auto rescanned = apply_patch_in_place(dir / "a.safetensors", *patch, {1, false});
  ASSERT_FALSE(rescanned.ok());
  EXPECT_EQ(rescanned.status().code(), ErrorCode::kBaseMismatch);
  auto trusted = apply_patch_in_place(dir / "a.safetensors", *patch, {1, false, &digests});
  EXPECT_TRUE(trusted.ok()) << trusted.status().to_string();

  // Digests that do not match what the patch expects are refused like a wrong base.
  TensorDigests wrong = digests;
  wrong.begin()->second.low ^= 1;
  copy_file(dir / "base.safetensors", dir / "b.safetensors");
  auto refused = apply_patch_in_place(dir / "b.safetensors", *patch, {1, false, &wrong});
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), ErrorCode::kBaseMismatch);
  EXPECT_TRUE(test::same_tensors(dir / "b.safetensors", dir / "base.safetensors"));
}

TEST(RoundTrip, ApplyRefusesAnExistingOutputUnlessForced) {
  TempDir dir;
  std::mt19937_64 rng(34);
  auto base = random_checkpoint(rng, DType::kBF16);
  auto next = mutate_all(rng, base, 0.01);
  ASSERT_TRUE(test::write_tensors(dir / "base.safetensors", base).ok());
  ASSERT_TRUE(test::write_tensors(dir / "next.safetensors", next).ok());
  auto b = Checkpoint::open(dir / "base.safetensors");
  auto n = Checkpoint::open(dir / "next.safetensors");
  ASSERT_TRUE(create_patch(*b, *n, dir / "p.dwsp", {}).ok());
  auto patch = Patch::open(dir / "p.dwsp");
  ASSERT_TRUE(patch.ok());
  test::write_bytes(dir / "out.safetensors", std::vector<std::byte>(3, std::byte{1}));
  auto refused = apply_patch(dir / "base.safetensors", *patch, dir / "out.safetensors", {});
  EXPECT_EQ(refused.status().code(), ErrorCode::kExists);
  EXPECT_EQ(test::read_bytes(dir / "out.safetensors").size(), 3u);
  auto forced = apply_patch(dir / "base.safetensors", *patch, dir / "out.safetensors", {0, true});
  ASSERT_TRUE(forced.ok()) << forced.status().to_string();
  EXPECT_TRUE(test::same_tensors(dir / "out.safetensors", dir / "next.safetensors"));
}

}  // namespace
}  // namespace dws

namespace dws {
namespace {

// apply_patch_to_tensors (the path of tensors held in memory, e.g. by the Python Subscriber): every
// encoding lands bit-identical in O(changes); a wrong base digest, a wrong shape and a structural patch
// are refused with nothing written.
TEST(RoundTrip, PatchesApplyIntoTensorsInMemoryOrWriteNothing) {
  TempDir dir;
  std::mt19937_64 rng(47);
  auto base = random_checkpoint(rng, DType::kBF16);
  auto next = mutate_all(rng, base, 0.01);
  ASSERT_TRUE(test::write_tensors(dir / "base.safetensors", base).ok());
  ASSERT_TRUE(test::write_tensors(dir / "next.safetensors", next).ok());
  const auto base_cp = Checkpoint::open(dir / "base.safetensors");
  ASSERT_TRUE(base_cp.ok());
  const TensorDigests base_digests = tensor_digests_by_name(*base_cp, tensor_digests(*base_cp, 1));
  for (Encoding enc : test::kPatchEncodings) {
    CreatePatchOptions o;
    o.encoding = enc;
    ASSERT_TRUE(create_patch(*base_cp, *Checkpoint::open(dir / "next.safetensors"), dir / "p.dwsp", o).ok());
    auto patch = Patch::open(dir / "p.dwsp");
    ASSERT_TRUE(patch.ok());
    auto memory = base;  // the tensors "in memory"
    std::vector<TensorView> views;
    for (auto& t : memory) views.push_back({t.name, t.dtype, t.shape, std::span(t.bytes)});
    // A wrong digest for one tensor: refused, and no tensor is written.
    TensorDigests wrong = base_digests;
    wrong.begin()->second.low ^= 1;
    auto refused = apply_patch_to_tensors(*patch, views, wrong);
    ASSERT_FALSE(refused.ok());
    EXPECT_EQ(refused.status().code(), ErrorCode::kBaseMismatch) << encoding_name(enc);
    for (size_t i = 0; i < memory.size(); ++i) EXPECT_TRUE(memory[i].bytes == base[i].bytes) << "written before the refusal";
    // A view of the wrong shape: E_INVALID_ARGUMENT naming the tensor.
    auto reshaped = views;
    reshaped[0].shape = {reshaped[0].shape[0] * reshaped[0].shape[1]};
    TensorDigests d = base_digests;
    auto bad_shape = apply_patch_to_tensors(*patch, reshaped, d);
    ASSERT_FALSE(bad_shape.ok());
    EXPECT_EQ(bad_shape.status().code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(bad_shape.status().message().find(views[0].name), std::string::npos) << bad_shape.status().to_string();
    // The right digests: bit-identical to the target, with the target's digests.
    auto applied = apply_patch_to_tensors(*patch, views, d);
    ASSERT_TRUE(applied.ok()) << encoding_name(enc) << ": " << applied.status().to_string();
    for (size_t i = 0; i < memory.size(); ++i) EXPECT_TRUE(memory[i].bytes == next[i].bytes) << encoding_name(enc) << " " << memory[i].name;
    for (const auto& t : memory) EXPECT_EQ(d.at(t.name), tensor_digest(t.name, t.dtype, t.shape, t.bytes)) << t.name;
  }
  // A structural patch (a tensor added) cannot apply to a fixed set of tensors.
  auto grown = next;
  grown.push_back(test::random_tensor(rng, "zz.added", DType::kF32, {5}));
  ASSERT_TRUE(test::write_tensors(dir / "grown.safetensors", grown).ok());
  ASSERT_TRUE(create_patch(*base_cp, *Checkpoint::open(dir / "grown.safetensors"), dir / "g.dwsp", {}).ok());
  auto patch = Patch::open(dir / "g.dwsp");
  auto memory = base;
  std::vector<TensorView> views;
  for (auto& t : memory) views.push_back({t.name, t.dtype, t.shape, std::span(t.bytes)});
  TensorDigests d = base_digests;
  EXPECT_EQ(apply_patch_to_tensors(*patch, views, d).status().code(), ErrorCode::kUnsupported);
}

}  // namespace
}  // namespace dws
