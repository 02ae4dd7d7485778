// The reference trajectory (shared/data/trajectory-small): every consecutive pair, every encoding,
// applied to a new file and chained in place, reproduces the next step exactly.
#include <gtest/gtest.h>

#include "test_util.h"

namespace dws {
namespace {

using test::TempDir;

// An encoding, and whether native may use its class layout.
struct EncodingCase {
  Encoding encoding;
  bool class_positions = false;
};

std::vector<EncodingCase> all_cases() {
  std::vector<EncodingCase> out;
  for (Encoding e : test::kPatchEncodings) out.push_back({e, false});
  out.push_back({Encoding::kNative, true});
  out.push_back({Encoding::kAuto, true});
  return out;
}

class Trajectory : public ::testing::TestWithParam<EncodingCase> {
 protected:
  void SetUp() override {
    if (!test::trajectory_available()) GTEST_SKIP() << "shared/data/trajectory-small not present";
  }
};

TEST_P(Trajectory, EveryConsecutivePairRoundTrips) {
  const Encoding enc = GetParam().encoding;
  const bool class_positions = GetParam().class_positions;
  TempDir dir;
  uint64_t total_changes = 0, total_payload = 0;
  for (int step = 0; step < 8; ++step) {
    SCOPED_TRACE("step " + std::to_string(step) + " -> " + std::to_string(step + 1));
    auto base = Checkpoint::open(test::trajectory_step(step));
    auto next = Checkpoint::open(test::trajectory_step(step + 1));
    ASSERT_TRUE(base.ok() && next.ok());
    const std::string patch_path = dir / ("p" + std::to_string(step));
    auto stats = create_patch(*base, *next, patch_path, {enc, 2, 1, class_positions});
    ASSERT_TRUE(stats.ok()) << stats.status().to_string();
    if (step == 0) EXPECT_EQ(stats->changes, 17067u) << "documented change count of step000 -> step001";
    const double density = static_cast<double>(stats->changes) / static_cast<double>(stats->elements);
    EXPECT_GT(density, 0.0035);
    EXPECT_LT(density, 0.0045);
    // The uncompressed encodings have exact sizes: int32 + bf16 = 6 bytes, uint16 gap + bf16 = 4 bytes.
    if (enc == Encoding::kIndices) EXPECT_EQ(stats->payload_bytes, 6 * stats->changes);
    total_changes += stats->changes;
    total_payload += stats->payload_bytes;

    auto patch = Patch::open(patch_path);
    ASSERT_TRUE(patch.ok()) << patch.status().to_string();
    const std::string out = dir / ("out" + std::to_string(step) + ".safetensors");
    auto applied = apply_patch(test::trajectory_step(step), *patch, out, {2, false});
    ASSERT_TRUE(applied.ok()) << applied.status().to_string();
    EXPECT_TRUE(test::same_tensors(out, test::trajectory_step(step + 1)));
    EXPECT_EQ(applied->changes, stats->changes);
  }
  const double per_change = static_cast<double>(total_payload) / static_cast<double>(total_changes);
  RecordProperty("payload_bytes_per_change", std::to_string(per_change));
  std::printf("[ info ] %s%s: %.3f payload bytes per changed element over 8 steps\n", std::string(encoding_name(enc)).c_str(),
              class_positions ? " (class positions)" : "", per_change);
  if (enc == Encoding::kGaps) EXPECT_NEAR(per_change, 4.0, 0.01);
}

TEST_P(Trajectory, ChainedInPlaceReachesTheLastStep) {
  const Encoding enc = GetParam().encoding;
  TempDir dir;
  const std::string live = dir / "live.safetensors";
  std::filesystem::copy_file(test::trajectory_step(0), live);
  for (int step = 0; step < 8; ++step) {
    auto base = Checkpoint::open(test::trajectory_step(step));
    auto next = Checkpoint::open(test::trajectory_step(step + 1));
    ASSERT_TRUE(base.ok() && next.ok());
    ASSERT_TRUE(create_patch(*base, *next, dir / "p", {enc, 1, 1, GetParam().class_positions}).ok());
    auto patch = Patch::open(dir / "p");
    ASSERT_TRUE(patch.ok());
    auto applied = apply_patch_in_place(live, *patch, {1, false});
    ASSERT_TRUE(applied.ok()) << "step " << step << ": " << applied.status().to_string();
    EXPECT_FALSE(applied->rewrote_files) << "same layout must be patched through the journal";
  }
  EXPECT_TRUE(test::same_tensors(live, test::trajectory_step(8)));
  auto f = SafetensorsFile::open(live);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->header().metadata.at("step"), "008");
}

INSTANTIATE_TEST_SUITE_P(AllEncodings, Trajectory, ::testing::ValuesIn(all_cases()), [](const auto& info) {
  return std::string(encoding_name(info.param.encoding)) + (info.param.class_positions ? "_class" : "");
});

TEST(TrajectorySharded, ShardedCopiesRoundTrip) {
  if (!test::trajectory_available()) GTEST_SKIP();
  TempDir dir;
  // Re-shard steps 0 and 1 into 4-file directories.
  for (int step : {0, 1}) {
    auto f = SafetensorsFile::open(test::trajectory_step(step));
    ASSERT_TRUE(f.ok());
    std::vector<test::HostTensor> tensors;
    for (const auto& info : f->header().tensors) {
      auto b = f->tensor_bytes(info);
      tensors.push_back({info.name, info.dtype, info.shape, {b.begin(), b.end()}});
    }
    test::write_sharded(dir / ("s" + std::to_string(step)), tensors, 4);
  }
  auto a = Checkpoint::open(dir / "s0");
  auto b = Checkpoint::open(dir / "s1");
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(create_patch(*a, *b, dir / "p", {Encoding::kGapsZstd, 2, 1}).ok());
  auto patch = Patch::open(dir / "p");
  ASSERT_TRUE(patch.ok());
  ASSERT_TRUE(apply_patch(dir / "s0", *patch, dir / "out", {}).ok());
  EXPECT_TRUE(test::same_tensors(dir / "out", test::trajectory_step(1)));
  ASSERT_TRUE(apply_patch_in_place(dir / "s0", *patch, {}).ok());
  EXPECT_TRUE(test::same_tensors(dir / "s0", test::trajectory_step(1)));
}

}  // namespace
}  // namespace dws
