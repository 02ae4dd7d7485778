// Tracked changes (dws/track.h): a ChangeTracker fed each step's tensors finds exactly the elements a diff
// finds, its patches are the diff's native patches to the byte, apply bit-identically, and publish through
// publish_prepared without a snapshot; hostile tracked input is refused.
#include <gtest/gtest.h>

#include <random>

#include "dws/diff.h"
#include "dws/sync.h"
#include "dws/track.h"
#include "test_util.h"

namespace dws {
namespace {

using test::TempDir;

// A checkpoint's tensors, copied into memory (the trainer's published tensors).
struct Mirror {
  std::vector<test::HostTensor> tensors;
  std::vector<TensorView> views() {
    std::vector<TensorView> v;
    for (auto& t : tensors) v.push_back({t.name, t.dtype, t.shape, t.bytes});
    return v;
  }
};

Mirror load(const std::string& path) {
  auto cp = Checkpoint::open(path);
  EXPECT_TRUE(cp.ok()) << cp.status().to_string();
  Mirror m;
  for (const auto& t : cp->tensors()) {
    auto b = cp->bytes(t);
    m.tensors.push_back({t.name, t.dtype, t.shape, std::vector<std::byte>(b.begin(), b.end())});
  }
  return m;
}

// Writes checkpoint `path`'s tensors into the mirror through the tracker, in chunks of random sizes.
void write_through(ChangeTracker& tracker, Mirror& mirror, const std::string& path, std::mt19937_64& rng) {
  auto cp = Checkpoint::open(path);
  ASSERT_TRUE(cp.ok());
  auto views = mirror.views();
  for (size_t i = 0; i < views.size(); ++i) {
    const auto bytes = cp->bytes(*cp->find(views[i].name));
    const size_t w = dtype_size_bytes(views[i].dtype);
    const uint64_t n = bytes.size() / w;
    for (uint64_t at = 0; at < n;) {
      const uint64_t len = std::min<uint64_t>(n - at, 1 + rng() % 70000);
      ASSERT_TRUE(tracker.write(views[i], at, bytes.subspan(at * w, len * w)).ok());
      at += len;
    }
  }
}

TensorDigests digests_of(const std::string& path) {
  auto cp = Checkpoint::open(path);
  return tensor_digests_by_name(*cp, tensor_digests(*cp, 0));
}

CheckpointLayout layout_of(const std::string& path) { return Checkpoint::open(path)->layout(); }

class Track : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!test::trajectory_available()) GTEST_SKIP() << "shared/data/trajectory-small not present";
  }
  TempDir dir_;
  std::mt19937_64 rng_{7};
};

TEST_F(Track, FindsExactlyTheDiffAndWritesTheSamePatch) {
  const std::string s0 = test::trajectory_step(0), s1 = test::trajectory_step(1);
  Mirror mirror = load(s0);
  ChangeTracker tracker;
  write_through(tracker, mirror, s1, rng_);
  EXPECT_GT(tracker.recorded_changes(), 0u);
  auto taken = tracker.take(mirror.views(), digests_of(s0));
  ASSERT_TRUE(taken.ok()) << taken.status().to_string();
  EXPECT_EQ(tracker.recorded_changes(), 0u);

  auto base = Checkpoint::open(s0);
  auto target = Checkpoint::open(s1);
  const TensorDigests target_digests = digests_of(s1);
  uint64_t tracked = 0;
  for (const TrackedTensorChanges& c : *taken) {
    tracked += c.positions.size();
    auto diff = diff_elements(base->bytes(*base->find(c.name)), target->bytes(*target->find(c.name)), dtype_size_bytes(c.dtype), 1);
    ASSERT_TRUE(diff.ok());
    EXPECT_EQ(c.positions, *diff) << c.name;
    EXPECT_EQ(c.target_digest, target_digests.at(c.name)) << c.name << ": derived target digest";
  }

  // The tracked patch equals create_patch's native patch (class layout off), payload for payload.
  CreatePatchOptions o;
  o.encoding = Encoding::kNative;
  auto tracked_stats = create_patch_from_changes(layout_of(s0), digests_of(s0), *taken, dir_ / "tracked.dwsp", o);
  ASSERT_TRUE(tracked_stats.ok()) << tracked_stats.status().to_string();
  auto diff_stats = create_patch(*base, *target, dir_ / "diff.dwsp", o);
  ASSERT_TRUE(diff_stats.ok());
  EXPECT_EQ(tracked_stats->changes, diff_stats->changes);
  EXPECT_EQ(tracked, diff_stats->changes);
  EXPECT_EQ(tracked_stats->payload_bytes, diff_stats->payload_bytes);
  auto tp = Patch::open(dir_ / "tracked.dwsp");
  auto dp = Patch::open(dir_ / "diff.dwsp");
  ASSERT_TRUE(tp.ok() && dp.ok());
  EXPECT_EQ(tp->header().target_state_digest, dp->header().target_state_digest);
  ASSERT_EQ(tp->header().tensors.size(), dp->header().tensors.size());
  for (size_t i = 0; i < tp->header().tensors.size(); ++i) {
    EXPECT_EQ(tp->header().tensors[i].payload_hash, dp->header().tensors[i].payload_hash) << tp->header().tensors[i].name;
  }

  // It applies to step 0, in place, to step 1's bytes, without rewriting the file.
  std::filesystem::copy_file(s0, dir_ / "recv.safetensors");
  auto applied = apply_patch_in_place(dir_ / "recv.safetensors", *tp, {});
  ASSERT_TRUE(applied.ok()) << applied.status().to_string();
  EXPECT_FALSE(applied->rewrote_files);
  EXPECT_TRUE(test::same_tensors(dir_ / "recv.safetensors", s1));
}

TEST_F(Track, StepsBetweenTakesFoldIntoOneChangeSetAndChangesUndoneDisappear) {
  const std::string s0 = test::trajectory_step(0), s2 = test::trajectory_step(2);
  Mirror mirror = load(s0);
  ChangeTracker tracker;
  write_through(tracker, mirror, test::trajectory_step(1), rng_);
  write_through(tracker, mirror, s2, rng_);
  // One element changed and then written back: no change at all.
  auto views = mirror.views();
  auto s0_cp = Checkpoint::open(s0);
  ASSERT_TRUE(s0_cp.ok());
  const std::byte* original = s0_cp->bytes(*s0_cp->find(views[0].name)).data();
  std::vector<std::byte> flipped(original, original + dtype_size_bytes(views[0].dtype));
  ASSERT_TRUE(views[0].data.size() > 0);
  const std::vector<std::byte> now(views[0].data.begin(), views[0].data.begin() + static_cast<ptrdiff_t>(flipped.size()));
  const bool first_changed = now != flipped;
  flipped[0] ^= std::byte{1};
  ASSERT_TRUE(tracker.write(views[0], 0, flipped).ok());
  ASSERT_TRUE(tracker.write(views[0], 0, now).ok());  // back to step 2's value

  auto taken = tracker.take(mirror.views(), digests_of(s0));
  ASSERT_TRUE(taken.ok()) << taken.status().to_string();
  auto base = Checkpoint::open(s0);
  auto target = Checkpoint::open(s2);
  uint64_t tracked = 0, diffed = 0;
  for (const auto& t : target->tensors()) {
    auto diff = diff_elements(base->bytes(*base->find(t.name)), target->bytes(t), dtype_size_bytes(t.dtype), 1);
    diffed += diff->size();
  }
  for (const TrackedTensorChanges& c : *taken) {
    tracked += c.positions.size();
    auto diff = diff_elements(base->bytes(*base->find(c.name)), target->bytes(*target->find(c.name)), dtype_size_bytes(c.dtype), 1);
    EXPECT_EQ(c.positions, *diff) << c.name;
    if (c.name == views[0].name) EXPECT_EQ(!c.positions.empty() && c.positions[0] == 0, first_changed);
  }
  EXPECT_EQ(tracked, diffed);
  auto st = create_patch_from_changes(layout_of(s0), digests_of(s0), *taken, dir_ / "p.dwsp", {});
  ASSERT_TRUE(st.ok());
  std::filesystem::copy_file(s0, dir_ / "recv.safetensors");
  ASSERT_TRUE(apply_patch_in_place(dir_ / "recv.safetensors", *Patch::open(dir_ / "p.dwsp"), {}).ok());
  EXPECT_TRUE(test::same_tensors(dir_ / "recv.safetensors", s2));
}

TEST_F(Track, RefusesHostileTrackedInput) {
  const std::string s0 = test::trajectory_step(0), s1 = test::trajectory_step(1);
  Mirror mirror = load(s0);
  ChangeTracker tracker;
  auto views = mirror.views();
  // Writes that do not fit the tensor.
  std::vector<std::byte> two(2 * dtype_size_bytes(views[0].dtype));
  const uint64_t numel = views[0].data.size() / dtype_size_bytes(views[0].dtype);
  EXPECT_EQ(tracker.write(views[0], numel - 1, two).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(tracker.write(views[0], 0, std::span(two).first(1)).code(), ErrorCode::kInvalidArgument);
  TensorView reshaped = views[0];
  reshaped.shape.push_back(1);  // same bytes, another shape
  ASSERT_TRUE(tracker.write(views[0], 0, std::span(two).first(dtype_size_bytes(views[0].dtype))).ok());
  EXPECT_EQ(tracker.write(reshaped, 0, {}).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(tracker.take({}, digests_of(s0)).status().code(), ErrorCode::kInvalidArgument) << "a written tensor missing";
  EXPECT_EQ(tracker.take(mirror.views(), {}).status().code(), ErrorCode::kInvalidArgument) << "no base digests";
  tracker.clear();

  write_through(tracker, mirror, s1, rng_);
  auto taken = tracker.take(mirror.views(), digests_of(s0));
  ASSERT_TRUE(taken.ok());
  ASSERT_FALSE(taken->empty());
  const CheckpointLayout layout = layout_of(s0);
  const TensorDigests base = digests_of(s0);
  auto refused = [&](std::vector<TrackedTensorChanges> c, ErrorCode code, const char* what) {
    auto r = create_patch_from_changes(layout, base, c, dir_ / "bad.dwsp", {});
    EXPECT_EQ(r.status().code(), code) << what << ": " << r.status().to_string();
    EXPECT_FALSE(std::filesystem::exists(dir_ / "bad.dwsp")) << what;
  };
  auto c = *taken;
  std::swap(c[0].positions.front(), c[0].positions.back());
  refused(c, ErrorCode::kPositions, "unsorted positions");
  c = *taken;
  c[0].positions.back() = 1ull << 40;
  refused(c, ErrorCode::kPositions, "position out of range");
  c = *taken;
  c[0].base_values.pop_back();
  refused(c, ErrorCode::kInvalidArgument, "short base values");
  c = *taken;
  c[0].base_digest.low ^= 1;
  refused(c, ErrorCode::kBaseMismatch, "another base");
  c = *taken;
  c[0].name = "no.such.tensor";
  refused(c, ErrorCode::kInvalidArgument, "unknown tensor");
  c = *taken;
  c.push_back(c[0]);
  refused(c, ErrorCode::kDuplicate, "tensor twice");
  CreatePatchOptions xor_zstd;
  xor_zstd.encoding = Encoding::kXorZstd;
  EXPECT_EQ(create_patch_from_changes(layout, base, *taken, dir_ / "bad.dwsp", xor_zstd).status().code(), ErrorCode::kUnsupported);
}

TEST_F(Track, PublishesPreparedVersionsWithoutASnapshot) {
  auto store = open_store(dir_ / "store");
  ASSERT_TRUE(store.ok());
  const std::string s0 = test::trajectory_step(0);
  PublishPreparedOptions delta_first;
  delta_first.patch_path = dir_ / "none.dwsp";
  EXPECT_EQ(publish_prepared(**store, delta_first).status().code(), ErrorCode::kInvalidArgument) << "an empty store takes an anchor first";
  PublishPreparedOptions v0;
  v0.anchor_path = s0;
  v0.step = 0;
  auto r0 = publish_prepared(**store, v0);
  ASSERT_TRUE(r0.ok()) << r0.status().to_string();
  EXPECT_TRUE(r0->has_anchor && !r0->has_delta);

  Mirror mirror = load(s0);
  TensorDigests digests = digests_of(s0);
  for (int step = 1; step <= 4; ++step) {
    ChangeTracker tracker;
    write_through(tracker, mirror, test::trajectory_step(step), rng_);
    auto taken = tracker.take(mirror.views(), digests);
    ASSERT_TRUE(taken.ok());
    ASSERT_TRUE(create_patch_from_changes(layout_of(s0), digests, *taken, dir_ / "p.dwsp", {}).ok());
    PublishPreparedOptions o;
    o.patch_path = dir_ / "p.dwsp";
    o.step = static_cast<uint64_t>(step);
    if (step == 3) {
      // With an anchor that is not the patch's target the version is refused and nothing is visible.
      o.anchor_path = test::trajectory_step(2);
      EXPECT_EQ(publish_prepared(**store, o).status().code(), ErrorCode::kTargetMismatch);
      EXPECT_EQ(list_versions(**store)->size(), 3u);
      o.anchor_path = test::trajectory_step(3);
    }
    auto r = publish_prepared(**store, o);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    EXPECT_EQ(r->version, static_cast<uint64_t>(step));
    EXPECT_EQ(publish_prepared(**store, o)->already_published, true) << "same step twice";
    for (const auto& c : *taken) digests[c.name] = c.target_digest;
    // The same patch again no longer starts at the latest state.
    o.step = 100;
    o.anchor_path.clear();
    EXPECT_EQ(publish_prepared(**store, o).status().code(), ErrorCode::kBaseMismatch);
  }
  auto pulled = pull(**store, dir_ / "recv.safetensors", {});
  ASSERT_TRUE(pulled.ok()) << pulled.status().to_string();
  EXPECT_EQ(pulled->version, 4u);
  EXPECT_TRUE(test::same_tensors(dir_ / "recv.safetensors", test::trajectory_step(4)));
  auto report = verify_store(**store, std::nullopt, true, 0);
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->ok()) << (report->problems.empty() ? "" : report->problems[0]);
}

}  // namespace
}  // namespace dws
