// Versions over a store: publish trajectory-small, pull from every starting point, recover through
// anchors from corrupted or missing deltas, refuse checkpoints that do not descend, and survive kill -9
// of publish and pull (12 trials each; DWS_SOAK=1 runs 120).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>

#include "dws/sync.h"
#include "sync/keys.h"
#include "test_util.h"

namespace dws {
namespace {

using test::TempDir;

int kill_trials() { return std::getenv("DWS_SOAK") && std::string(std::getenv("DWS_SOAK")) == "1" ? 120 : 12; }

std::string state_of(const std::string& path) {
  auto cp = Checkpoint::open(path);
  if (!cp.ok()) return "unopenable: " + cp.status().to_string();
  return digest_hex(state_digest(tensor_digests(*cp, 1)));
}

class Sync : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!test::trajectory_available()) GTEST_SKIP() << "shared/data/trajectory-small not present";
    auto s = open_store(dir_ / "store");
    ASSERT_TRUE(s.ok());
    store_ = std::move(*s);
  }
  // Publishes trajectory steps 0..last with an anchor every `anchor_every` versions.
  void publish_steps(int last, uint64_t anchor_every) {
    PublishOptions o;
    o.anchor_every = anchor_every;
    o.snapshot_path = dir_ / "snapshot.safetensors";
    o.patch.threads = 2;
    for (int s = 0; s <= last; ++s) {
      auto r = publish(*store_, test::trajectory_step(s), o);
      ASSERT_TRUE(r.ok()) << "step " << s << ": " << r.status().to_string();
      ASSERT_EQ(r->version, static_cast<uint64_t>(s));
      EXPECT_EQ(r->has_delta, s > 0);
      EXPECT_EQ(r->has_anchor, s % anchor_every == 0);
    }
  }
  // A local copy at version v (pulled from scratch).
  std::string local_at(int v, const std::string& name) {
    const std::string local = dir_ / name;
    PullOptions po;
    po.version = static_cast<uint64_t>(v);
    auto r = pull(*store_, local, po);
    EXPECT_TRUE(r.ok()) << r.status().to_string();
    return local;
  }
  std::string object_key(uint64_t version, const std::string& role) {
    auto m = read_manifest(*store_, version);
    EXPECT_TRUE(m.ok());
    for (const auto& f : m->files) {
      if (f.role == role) return f.key;
    }
    return "";
  }
  TempDir dir_;
  std::unique_ptr<Store> store_;
};

TEST_F(Sync, PullFromEveryStartingVersionEndsAtTheLast) {
  publish_steps(8, 4);
  auto versions = list_versions(*store_);
  ASSERT_TRUE(versions.ok());
  EXPECT_EQ(versions->size(), 9u);
  for (int start = -1; start <= 7; ++start) {
    SCOPED_TRACE("from " + (start < 0 ? std::string("nothing") : std::to_string(start)));
    const std::string local = start < 0 ? dir_ / "fresh.safetensors" : local_at(start, "from" + std::to_string(start) + ".safetensors");
    auto r = pull(*store_, local, {});
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    EXPECT_EQ(r->version, 8u);
    EXPECT_TRUE(test::same_tensors(local, test::trajectory_step(8)));
    if (start < 0) {
      EXPECT_TRUE(r->used_anchor);  // nothing local: the nearest anchor (version 8 itself)
      EXPECT_FALSE(r->from_version.has_value());
    } else {
      EXPECT_FALSE(r->used_anchor);  // the deltas (≈42 KB each) are far cheaper than an 8 MB anchor
      EXPECT_EQ(r->from_version, std::optional<uint64_t>(start));
      EXPECT_EQ(r->applied.size(), static_cast<size_t>(8 - start));
    }
    EXPECT_EQ(local_version(local).value(), std::optional<uint64_t>(8));
  }
  auto report = verify_store(*store_, std::nullopt, /*full=*/true, 2);
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->ok()) << report->problems.front();
}

TEST_F(Sync, PullToAnOlderVersionRestoresFromAnAnchor) {
  publish_steps(6, 4);
  const std::string local = local_at(6, "l.safetensors");
  PullOptions po;
  po.version = 5;
  auto r = pull(*store_, local, po);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_TRUE(r->used_anchor);
  EXPECT_EQ(r->applied, (std::vector<uint64_t>{5}));
  EXPECT_TRUE(test::same_tensors(local, test::trajectory_step(5)));
}

TEST_F(Sync, ALocalCopyWithoutSidecarIsIdentifiedByItsDigest) {
  publish_steps(3, 16);
  const std::string local = dir_ / "copy.safetensors";
  std::filesystem::copy_file(test::trajectory_step(1), local);
  auto r = pull(*store_, local, {});
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->from_version, std::optional<uint64_t>(1));
  EXPECT_FALSE(r->used_anchor);
  EXPECT_TRUE(test::same_tensors(local, test::trajectory_step(3)));
}

TEST(SyncS3, PublishAndPullThroughSeaweedFSEndBitIdentical) {
  if (!test::trajectory_available()) GTEST_SKIP() << "shared/data/trajectory-small not present";
  auto store = test::open_fixture_s3_store("sync");
  if (!store) {
    if (test::s3_required()) FAIL() << "no S3 fixture";
    GTEST_SKIP() << "no S3 fixture: run through ctest, which starts SeaweedFS";
  }
  TempDir dir;
  PublishOptions o;
  o.anchor_every = 4;
  o.snapshot_path = dir / "snapshot.safetensors";
  for (int s = 0; s <= 8; ++s) {
    o.step = static_cast<uint64_t>(s);
    auto r = publish(*store, test::trajectory_step(s), o);
    ASSERT_TRUE(r.ok()) << "step " << s << ": " << r.status().to_string();
  }
  for (int start : {-1, 3}) {
    const std::string local = dir / ("recv" + std::to_string(start + 1) + ".safetensors");
    if (start >= 0) {
      PullOptions po;
      po.version = static_cast<uint64_t>(start);
      ASSERT_TRUE(pull(*store, local, po).ok());
    }
    auto r = pull(*store, local, {});
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    EXPECT_EQ(r->version, 8u);
    EXPECT_TRUE(test::same_tensors(local, test::trajectory_step(8)));
  }
  auto report = verify_store(*store, std::nullopt, /*full=*/true, 2);
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->ok()) << report->problems.front();
}

TEST(SyncS3, WrongCredentialsFailAtOnceWithAClearErrorAndWriteNothing) {
  auto store = test::open_fixture_s3_store("denied");  // sets the fixture's environment
  if (!store) {
    if (test::s3_required()) FAIL() << "no S3 fixture";
    GTEST_SKIP() << "no S3 fixture: run through ctest, which starts SeaweedFS";
  }
  const std::string good = std::getenv("AWS_SECRET_ACCESS_KEY");
  ::setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret", 1);
  auto denied = open_store(store->describe());  // the same bucket and prefix
  ::setenv("AWS_SECRET_ACCESS_KEY", good.c_str(), 1);
  ASSERT_TRUE(denied.ok());
  const auto t0 = std::chrono::steady_clock::now();
  const std::string data = "x";
  Status st = (*denied)->put("a", std::as_bytes(std::span(data.data(), data.size())));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), ErrorCode::kDenied) << st.to_string();
  EXPECT_NE(st.message().find("access denied"), std::string::npos) << st.to_string();
  EXPECT_NE(st.message().find("credentials from environment"), std::string::npos) << st.to_string();
  EXPECT_EQ(st.message().find("not-the-secret"), std::string::npos) << "a secret in a message: " << st.to_string();
  EXPECT_LT(seconds, 5.0) << "authorization failures must not be retried";
  EXPECT_FALSE(store->stat("a").value().has_value());
}

TEST_F(Sync, FollowingPullsTrustTheSidecarDigestsAndNeverRescan) {
  publish_steps(8, 16);
  const std::string local = local_at(2, "l.safetensors");
  for (uint64_t v = 3; v <= 8; ++v) {
    PullOptions po;
    po.version = v;
    auto r = pull(*store_, local, po);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    EXPECT_FALSE(r->rescanned) << "version " << v;
    EXPECT_EQ(r->applied, (std::vector<uint64_t>{v}));
    // The digests the pull carried forward describe the bytes on disk.
    auto cp = Checkpoint::open(local);
    ASSERT_TRUE(cp.ok());
    const auto d = tensor_digests(*cp, 1);
    ASSERT_EQ(r->tensor_digests.size(), cp->tensors().size());
    for (size_t i = 0; i < d.size(); ++i) EXPECT_EQ(r->tensor_digests.at(cp->tensors()[i].name), d[i]);
    EXPECT_EQ(digest_hex(state_digest(d)), r->state_digest);
  }
  EXPECT_TRUE(test::same_tensors(local, test::trajectory_step(8)));
}

TEST_F(Sync, ALocalCopyWrittenBehindTheSidecarsBackIsRescannedAndRecovered) {
  publish_steps(4, 4);
  const std::string local = local_at(2, "l.safetensors");
  {
    // Someone edits one byte of a tensor the next delta does not touch... or does: either way the
    // stamps change, the sidecar's digests are not trusted, and the rescan finds no version.
    auto bytes = test::read_bytes(local);
    bytes[bytes.size() - 3] ^= std::byte{0x40};
    std::ofstream(local, std::ios::binary | std::ios::trunc).write(reinterpret_cast<const char*>(bytes.data()),
                                                                   static_cast<std::streamsize>(bytes.size()));
  }
  auto r = pull(*store_, local, {});
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_TRUE(r->rescanned);
  EXPECT_FALSE(r->from_version.has_value());
  EXPECT_TRUE(r->used_anchor);
  EXPECT_TRUE(test::same_tensors(local, test::trajectory_step(4)));
}

TEST_F(Sync, ASidecarWhoseDigestsDoNotAddUpIsNotTrusted) {
  publish_steps(3, 16);
  const std::string local = local_at(1, "l.safetensors");
  const std::string sidecar = local + ".dws-version";
  std::string text;
  {
    std::ifstream in(sidecar);
    text.assign(std::istreambuf_iterator<char>(in), {});
  }
  // Change one hex digit of one tensor digest; the document stays well-formed and its stamps match.
  auto doc = nlohmann::json::parse(text);
  ASSERT_TRUE(doc.contains("files"));
  ASSERT_FALSE(doc["tensors"].empty());
  std::string& hex = doc["tensors"].begin()->get_ref<std::string&>();
  hex[5] = hex[5] == '0' ? '1' : '0';
  std::ofstream(sidecar, std::ios::trunc) << doc.dump();
  auto r = pull(*store_, local, {});
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_TRUE(r->rescanned);
  EXPECT_EQ(r->from_version, std::optional<uint64_t>(1));
  EXPECT_TRUE(test::same_tensors(local, test::trajectory_step(3)));
  // And --audit rescans even a good sidecar.
  PullOptions po;
  po.audit = true;
  auto again = pull(*store_, local, po);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->rescanned);
  EXPECT_EQ(again->version, 3u);
}

TEST_F(Sync, CorruptedDeltaIsRefusedAndAnAnchorRecovers) {
  publish_steps(8, 4);
  const std::string local = local_at(4, "l.safetensors");
  // Flip one byte in the middle of version 6's delta.
  const std::string key = object_key(6, "delta");
  auto bytes = store_->get(key, 1 << 30).value();
  bytes[bytes.size() / 2] ^= std::byte{0x01};
  ASSERT_TRUE(store_->put(key, bytes).ok());
  auto r = pull(*store_, local, {});
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_TRUE(r->used_anchor);  // 4 -> 5 applied, 6 refused, then anchor 8
  EXPECT_TRUE(test::same_tensors(local, test::trajectory_step(8)));
  // verify names the bad object.
  auto report = verify_store(*store_, std::nullopt, false, 1);
  ASSERT_TRUE(report.ok());
  ASSERT_EQ(report->problems.size(), 1u);
  EXPECT_NE(report->problems[0].find(key), std::string::npos) << report->problems[0];
}

TEST_F(Sync, MissingDeltaWithNoAnchorPastItFailsPreciselyAndLeavesAValidVersion) {
  publish_steps(3, 16);
  const std::string local = local_at(1, "l.safetensors");
  ASSERT_TRUE(store_->remove(object_key(2, "delta")).ok());
  auto r = pull(*store_, local, {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kNotFound) << r.status().to_string();
  EXPECT_NE(r.status().message().find("version 2"), std::string::npos) << r.status().to_string();
  // Nothing wrong was applied: still exactly version 1, and the sidecar says so.
  EXPECT_TRUE(test::same_tensors(local, test::trajectory_step(1)));
  EXPECT_EQ(local_version(local).value(), std::optional<uint64_t>(1));
  // A fresh pull to version 1 still works from the anchor; to 3 it cannot.
  EXPECT_FALSE(pull(*store_, dir_ / "fresh.safetensors", {}).ok());
  EXPECT_FALSE(std::filesystem::exists(dir_ / "fresh.safetensors"));
}

// The real store behind it, failing every read after the listing: a store that went down mid-pull.
class FailingReads : public Store {
 public:
  FailingReads(Store& inner, ErrorCode code) : inner_(inner), code_(code) {}
  Status put(std::string_view k, std::span<const std::byte> d) override { return inner_.put(k, d); }
  Status put_file(std::string_view k, const std::string& p) override { return inner_.put_file(k, p); }
  Status put_if_absent(std::string_view k, std::span<const std::byte> d) override { return inner_.put_if_absent(k, d); }
  Result<std::vector<std::byte>> get(std::string_view, uint64_t) override { return fail(); }
  Result<std::vector<std::byte>> get_range(std::string_view, uint64_t, uint64_t) override { return fail(); }
  Status get_file(std::string_view, const std::string&) override { return fail(); }
  Result<std::optional<ObjectInfo>> stat(std::string_view) override { return fail(); }
  Result<std::vector<ObjectInfo>> list(std::string_view prefix) override { return inner_.list(prefix); }
  Status remove(std::string_view k) override { return inner_.remove(k); }
  std::string describe() const override { return "failing " + inner_.describe(); }

 private:
  Status fail() const { return make_error(code_, "injected: the store went away"); }
  Store& inner_;
  ErrorCode code_;
};

// Regression: a pull whose store listed its versions and then became unreachable failed with
// E_NOT_FOUND ("no anchor at or before version N"), which follow treats as fatal, instead of
// E_UNAVAILABLE, which it outlives (seen in s3.faults under ASan's timing).
TEST_F(Sync, AStoreThatFailsAfterListingIsReportedAsSuchNotAsMissingVersions) {
  publish_steps(2, 16);
  const std::string local = local_at(0, "l.safetensors");
  for (ErrorCode code : {ErrorCode::kUnavailable, ErrorCode::kDenied, ErrorCode::kIo}) {
    FailingReads failing(*store_, code);
    for (const std::string& where : {local, dir_ / "fresh.safetensors"}) {
      auto r = pull(failing, where, {});
      EXPECT_EQ(r.status().code(), code) << where << ": " << r.status().to_string();
    }
  }
  EXPECT_TRUE(test::same_tensors(local, test::trajectory_step(0)));
}

TEST_F(Sync, PullOfAVersionThatIsNotThereFailsAndWritesNothing) {
  auto empty = pull(*store_, dir_ / "x.safetensors", {});
  EXPECT_EQ(empty.status().code(), ErrorCode::kNotFound);
  EXPECT_NE(empty.status().message().find("has no versions"), std::string::npos) << empty.status().to_string();
  publish_steps(1, 16);
  PullOptions po;
  po.version = 7;
  auto r = pull(*store_, dir_ / "x.safetensors", po);
  EXPECT_EQ(r.status().code(), ErrorCode::kNotFound);
  EXPECT_NE(r.status().message().find("version 7 is not in"), std::string::npos) << r.status().to_string();
  EXPECT_FALSE(std::filesystem::exists(dir_ / "x.safetensors"));
  EXPECT_FALSE(std::filesystem::exists(dir_ / "x.safetensors.dws-version"));
}

// Two publishers racing on one store: every version is committed once, losers get E_EXISTS and leave
// no objects behind, and the store verifies.
TEST_F(Sync, RacingPublishersCommitEachVersionOnce) {
  publish_steps(0, 16);
  std::atomic<int> ok{0}, lost{0}, other{0};
  std::mutex mu;
  std::string other_errors;
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      PublishOptions o;
      o.snapshot_path = dir_ / ("snap" + std::to_string(t) + ".safetensors");
      for (int step = 1; step <= 4; ++step) {
        auto r = publish(*store_, test::trajectory_step(step), o);
        if (r.ok()) ++ok;
        else if (r.status().code() == ErrorCode::kExists) ++lost;
        else {
          ++other;
          std::lock_guard<std::mutex> lock(mu);
          other_errors += r.status().to_string() + "\n";
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(other.load(), 0) << other_errors;
  EXPECT_EQ(ok.load() + lost.load(), 8);
  EXPECT_EQ(list_versions(*store_)->size(), static_cast<size_t>(1 + ok.load()));
  auto report = verify_store(*store_, std::nullopt, true, 1);
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->ok()) << report->problems.front();
  auto orphans = gc(*store_, {100, {}, true});
  ASSERT_TRUE(orphans.ok());
  EXPECT_EQ(orphans->deleted_objects, 0u) << "a publisher that lost the race left objects behind";
  std::printf("[ info ] racing publishers: %d committed, %d lost the race\n", ok.load(), lost.load());
}

TEST_F(Sync, CorruptedAnchorIsRefused) {
  publish_steps(1, 16);
  const std::string key = object_key(0, "anchor");
  auto bytes = store_->get(key, 1 << 30).value();
  bytes[bytes.size() - 3] ^= std::byte{0x20};
  ASSERT_TRUE(store_->put(key, bytes).ok());
  auto r = pull(*store_, dir_ / "fresh.safetensors", {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kPayloadHash) << r.status().to_string();
  EXPECT_FALSE(std::filesystem::exists(dir_ / "fresh.safetensors"));
  // verify reads objects in bounded ranges: a shortened anchor is reported by size, naming it.
  bytes.resize(bytes.size() - 100);
  ASSERT_TRUE(store_->put(key, bytes).ok());
  auto report = verify_store(*store_, std::nullopt, false, 1);
  ASSERT_TRUE(report.ok());
  ASSERT_EQ(report->problems.size(), 1u);
  EXPECT_NE(report->problems[0].find(key + " is " + std::to_string(bytes.size()) + " bytes"), std::string::npos)
      << report->problems[0];
}

TEST_F(Sync, ACheckpointThatDoesNotDescendNeedsAnAnchor) {
  publish_steps(1, 16);
  // An unrelated model with the same tensors: every element differs.
  std::mt19937_64 rng(91);
  auto cp = Checkpoint::open(test::trajectory_step(1)).value();
  std::vector<test::HostTensor> tensors;
  for (const auto& t : cp.tensors()) tensors.push_back(test::random_tensor(rng, t.name, t.dtype, t.shape));
  ASSERT_TRUE(test::write_tensors(dir_ / "other.safetensors", tensors).ok());
  PublishOptions o;
  o.snapshot_path = dir_ / "snapshot.safetensors";
  auto r = publish(*store_, dir_ / "other.safetensors", o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kBaseMismatch) << r.status().to_string();
  EXPECT_NE(r.status().message().find("--anchor"), std::string::npos);
  EXPECT_EQ(list_versions(*store_)->size(), 2u);
  EXPECT_EQ(store_->list("versions/00000000000000000002")->size(), 0u) << "no files of the refused version remain";
  o.anchor = true;
  r = publish(*store_, dir_ / "other.safetensors", o);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_TRUE(r->has_anchor);
  EXPECT_FALSE(r->has_delta);
  const std::string local = local_at(1, "l.safetensors");
  auto p = pull(*store_, local, {});
  ASSERT_TRUE(p.ok()) << p.status().to_string();
  EXPECT_TRUE(p->used_anchor);
  EXPECT_TRUE(test::same_tensors(local, dir_ / "other.safetensors"));
}

TEST_F(Sync, TheSnapshotIsRebuiltFromTheStoreWhenLost) {
  publish_steps(2, 16);
  std::filesystem::remove(dir_ / "snapshot.safetensors");
  std::filesystem::remove(dir_ / "snapshot.safetensors.dws-version");
  PublishOptions o;
  o.snapshot_path = dir_ / "snapshot.safetensors";
  auto r = publish(*store_, test::trajectory_step(3), o);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_TRUE(r->has_delta);  // a delta against the rebuilt version 2, not a new chain
  EXPECT_EQ(r->changes, 16695u);
  EXPECT_TRUE(test::same_tensors(dir_ / "snapshot.safetensors", test::trajectory_step(3)));
}

TEST_F(Sync, ShardedCheckpointsPublishAndPull) {
  // Two versions of a sharded model.
  std::mt19937_64 rng(92);
  std::vector<test::HostTensor> v0, v1;
  for (int i = 0; i < 5; ++i) v0.push_back(test::random_tensor(rng, "layer" + std::to_string(i), DType::kBF16, {3000}));
  for (const auto& t : v0) v1.push_back(test::mutate(rng, t, 0.01));
  test::write_sharded(dir_ / "m0", v0, 2);
  test::write_sharded(dir_ / "m1", v1, 2);
  PublishOptions o;
  o.snapshot_path = dir_ / "snap";
  ASSERT_TRUE(publish(*store_, dir_ / "m0", o).ok());
  ASSERT_TRUE(publish(*store_, dir_ / "m1", o).ok());
  const std::string local = dir_ / "local";
  PullOptions po;
  po.version = 0;
  auto r = pull(*store_, local, po);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_TRUE(std::filesystem::is_directory(local));
  r = pull(*store_, local, {});
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_FALSE(r->used_anchor);
  EXPECT_TRUE(test::same_tensors(local, dir_ / "m1"));
}

TEST_F(Sync, AFoldIsUsedByLaggardsWhenCheaper) {
  publish_steps(8, 16);
  CreatePatchOptions o;
  o.threads = 2;
  auto f = fold(*store_, 1, 7, dir_.path(), o);
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_LT(f->bytes, f->chain_bytes);  // changes to the same elements collapse
  EXPECT_EQ(fold(*store_, 1, 7, dir_.path(), o).status().code(), ErrorCode::kExists);
  EXPECT_EQ(fold(*store_, 7, 7, dir_.path(), o).status().code(), ErrorCode::kInvalidArgument);
  const std::string local = local_at(1, "l.safetensors");
  auto r = pull(*store_, local, {});
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_TRUE(r->used_fold);
  EXPECT_FALSE(r->used_anchor);
  EXPECT_EQ(r->applied, (std::vector<uint64_t>{8}));  // the fold to 7, then the delta 7 -> 8
  EXPECT_TRUE(test::same_tensors(local, test::trajectory_step(8)));
  // A fold that ends at the target itself.
  ASSERT_TRUE(fold(*store_, 3, 8, dir_.path(), o).ok());
  const std::string at3 = local_at(3, "at3.safetensors");
  r = pull(*store_, at3, {});
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_TRUE(r->used_fold);
  EXPECT_TRUE(r->applied.empty());
  EXPECT_EQ(r->version, 8u);
  EXPECT_TRUE(test::same_tensors(at3, test::trajectory_step(8)));
  // A receiver at 2 cannot use either and takes the chain.
  const std::string other = local_at(2, "o.safetensors");
  r = pull(*store_, other, {});
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->used_fold);
  EXPECT_TRUE(test::same_tensors(other, test::trajectory_step(8)));
}

TEST_F(Sync, GcKeepsWhatTheNewestVersionsAndPinsNeed) {
  publish_steps(8, 3);  // anchors at 0, 3, 6
  CreatePatchOptions o;
  ASSERT_TRUE(fold(*store_, 1, 4, dir_.path(), o).ok());
  GcOptions g;
  g.keep_last = 2;  // 7, 8 need 6 (their anchor)
  g.pinned = {4};   // 4 needs 3
  g.dry_run = true;
  auto dry = gc(*store_, g);
  ASSERT_TRUE(dry.ok()) << dry.status().to_string();
  EXPECT_EQ(dry->deleted_versions, (std::vector<uint64_t>{0, 1, 2, 5}));
  EXPECT_EQ(list_versions(*store_)->size(), 9u) << "a dry run deletes nothing";
  g.dry_run = false;
  auto r = gc(*store_, g);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->kept_versions, (std::vector<uint64_t>{3, 4, 6, 7, 8}));
  EXPECT_EQ(*list_versions(*store_), (std::vector<uint64_t>{3, 4, 6, 7, 8}));
  EXPECT_TRUE(store_->list("versions/00000000000000000001/")->empty());
  EXPECT_TRUE(store_->list("folds/")->empty()) << "the fold from retired version 1 is gone";
  auto report = verify_store(*store_, std::nullopt, true, 2);
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->ok()) << report->problems.front();
  for (int v : {3, 4, 8}) {
    const std::string local = local_at(v, "v" + std::to_string(v) + ".safetensors");
    EXPECT_TRUE(test::same_tensors(local, test::trajectory_step(v)));
  }
  EXPECT_EQ(gc(*store_, {8, {99}, false}).status().code(), ErrorCode::kNotFound);
}

TEST_F(Sync, GcRemovesOrphansOfDeadPublishers) {
  publish_steps(2, 16);
  const std::string orphan = version_prefix(1) + "deadbeefdeadbeef/delta.dwsp";
  ASSERT_TRUE(store_->put(orphan, std::vector<std::byte>(10)).ok());
  const std::string in_progress = version_prefix(3) + "0123456789abcdef/delta.dwsp";
  ASSERT_TRUE(store_->put(in_progress, std::vector<std::byte>(10)).ok());
  auto r = gc(*store_, {8, {}, false});
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->deleted_versions.empty());
  EXPECT_EQ(r->deleted_objects, 1u);
  EXPECT_FALSE(store_->stat(orphan)->has_value());
  EXPECT_TRUE(store_->stat(in_progress)->has_value()) << "files above the newest version may be a publish in progress";
}

// kill -9 of `dws publish` at random moments: every committed version verifies, no partial version is
// visible, and publishing again continues the chain.
TEST_F(Sync, KilledPublishNeverLeavesAPartialVersion) {
  std::mt19937_64 rng(93);
  const std::string store = dir_ / "store";
  const std::string snap = dir_ / "snapshot.safetensors";
  auto run = [&](int step) {
    return std::vector<std::string>{DWS_CLI_PATH, "-q", "publish", store, test::trajectory_step(step), "--snapshot", snap,
                                     "--anchor-every", "3"};
  };
  ASSERT_EQ(test::run_cli({"-q", "publish", store, test::trajectory_step(0), "--snapshot", snap}).exit_code, 0);
  int killed = 0;
  for (int trial = 0; trial < kill_trials(); ++trial) {
    const int step = 1 + trial % 8;
    pid_t pid = test::spawn(run(step), dir_ / "log");
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 60000));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    killed += WIFSIGNALED(status) ? 1 : 0;
    auto report = verify_store(*store_, std::nullopt, false, 1);
    ASSERT_TRUE(report.ok());
    ASSERT_TRUE(report->ok()) << "trial " << trial << ": " << report->problems.front();
    // Every object in the store belongs to a committed version or is an orphan of a killed publisher;
    // orphans are never referenced by a manifest, so readers cannot see them.
  }
  // Publishing resumes from whatever state the snapshot was left in.
  auto final_run = test::run_cli({"-q", "publish", store, test::trajectory_step(8), "--snapshot", snap});
  ASSERT_EQ(final_run.exit_code, 0) << final_run.output;
  auto report = verify_store(*store_, std::nullopt, true, 2);
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->ok()) << report->problems.front();
  auto r = pull(*store_, dir_ / "check.safetensors", {});
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(test::same_tensors(dir_ / "check.safetensors", test::trajectory_step(8)));
  std::printf("[ info ] publish: %d of %d runs killed mid-way\n", killed, kill_trials());
}

// kill -9 of `dws pull` at random moments: the local checkpoint is always at some committed version
// (after the next pull's recovery), and the next pull completes.
TEST_F(Sync, KilledPullLeavesTheLocalCopyAtAValidVersion) {
  publish_steps(8, 4);
  std::map<std::string, uint64_t> version_of_state;
  for (uint64_t v = 0; v <= 8; ++v) version_of_state[read_manifest(*store_, v)->state_digest] = v;
  std::mt19937_64 rng(94);
  const std::string local = dir_ / "local.safetensors";
  int killed = 0;
  for (int trial = 0; trial < kill_trials(); ++trial) {
    // Start from version 0 (chain) or from nothing (anchor restore), alternately.
    std::filesystem::remove(local);
    std::filesystem::remove(local + ".dws-version");
    if (trial % 2 == 0) {
      PullOptions po;
      po.version = 0;
      ASSERT_TRUE(pull(*store_, local, po).ok());
    }
    pid_t pid = test::spawn({DWS_CLI_PATH, "-q", "pull", dir_ / "store", local}, dir_ / "log");
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 40000));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    killed += WIFSIGNALED(status) ? 1 : 0;
    if (std::filesystem::exists(local)) {
      if (std::filesystem::exists(journal_path_for(local))) ASSERT_TRUE(recover_checkpoint(local).ok());
      const std::string s = state_of(local);
      ASSERT_TRUE(version_of_state.count(s)) << "trial " << trial << ": local state " << s << " is no version";
    }
    auto r = pull(*store_, local, {});
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    ASSERT_TRUE(test::same_tensors(local, test::trajectory_step(8))) << "trial " << trial;
  }
  std::printf("[ info ] pull: %d of %d runs killed mid-way\n", killed, kill_trials());
}

TEST(Manifest, RefusesHostileManifests) {
  VersionManifest m;
  m.version = 3;
  m.base_version = 2;
  m.base_state_digest = std::string(32, 'a');
  m.state_digest = std::string(32, 'b');
  m.files.push_back({"versions/00000000000000000003/t/delta.dwsp", "delta", "", 10, std::string(32, 'c')});
  const std::string good = serialize_manifest(m);
  ASSERT_TRUE(parse_manifest(good).ok()) << parse_manifest(good).status().to_string();
  auto mutate = [&](const std::string& from, const std::string& to) {
    std::string s = good;
    const size_t at = s.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    s.replace(at, from.size(), to);
    return parse_manifest(s).status();
  };
  EXPECT_EQ(mutate("versions/00000000000000000003/t/", "versions/00000000000000000001/t/").code(), ErrorCode::kPatchMetadata);
  EXPECT_EQ(mutate("versions/00000000000000000003/t/", "../../etc/").code(), ErrorCode::kPatchMetadata);
  EXPECT_EQ(mutate("\"delta\"", "\"payload\"").code(), ErrorCode::kPatchMetadata);
  EXPECT_EQ(mutate("\"base_version\": 2", "\"base_version\": 1").code(), ErrorCode::kPatchMetadata);
  EXPECT_EQ(mutate(std::string(32, 'b'), "zz").code(), ErrorCode::kPatchMetadata);
  EXPECT_EQ(mutate("\"format_version\": 2", "\"format_version\": 3").code(), ErrorCode::kUnsupported);
  EXPECT_EQ(mutate("\"has_anchor\": false", "\"has_anchor\": true").code(), ErrorCode::kPatchMetadata);
  EXPECT_FALSE(parse_manifest("{\"format\": \"dws-version\", \"format\": \"x\"}").ok());
  EXPECT_FALSE(parse_manifest("[]").ok());
}

TEST(Manifest, RefusesHostileFoldManifests) {
  FoldManifest f;
  f.from_version = 2;
  f.to_version = 5;
  f.base_state_digest = std::string(32, 'a');
  f.state_digest = std::string(32, 'b');
  f.file = {fold_prefix(2, 5) + "t/fold.dwsp", "fold", "", 10, std::string(32, 'c')};
  const std::string good = serialize_fold_manifest(f);
  auto parsed = parse_fold_manifest(good);
  ASSERT_TRUE(parsed.ok()) << parsed.status().to_string();
  EXPECT_EQ(parsed->file.key, f.file.key);
  auto mutate = [&](const std::string& from, const std::string& to) {
    std::string s = good;
    const size_t at = s.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    s.replace(at, from.size(), to);
    return parse_fold_manifest(s).status().code();
  };
  EXPECT_EQ(mutate("\"to_version\": 5", "\"to_version\": 2"), ErrorCode::kPatchMetadata);
  EXPECT_EQ(mutate(fold_prefix(2, 5), "versions/x/"), ErrorCode::kPatchMetadata);
  EXPECT_EQ(mutate(fold_prefix(2, 5) + "t", "../t"), ErrorCode::kPatchMetadata);
  EXPECT_EQ(mutate("\"size_bytes\": 10", "\"size_bytes\": -1"), ErrorCode::kPatchMetadata);
  EXPECT_EQ(mutate("dws-fold", "dws-version"), ErrorCode::kPatchMetadata);
}

}  // namespace
}  // namespace dws

// ---- several writers ----

namespace dws {
namespace {

// Writes step s of the trajectory as two halves: even-indexed tensors (by name) for writer 0, odd for 1.
std::vector<std::string> split_step(const TempDir& dir, int s) {
  auto cp = Checkpoint::open(test::trajectory_step(s));
  EXPECT_TRUE(cp.ok());
  std::vector<test::HostTensor> halves[2];
  for (size_t i = 0; i < cp->tensors().size(); ++i) {
    const CheckpointTensor& t = cp->tensors()[i];
    auto bytes = cp->bytes(t);
    halves[i % 2].push_back({t.name, t.dtype, t.shape, std::vector<std::byte>(bytes.begin(), bytes.end())});
  }
  std::vector<std::string> paths;
  for (int w = 0; w < 2; ++w) {
    paths.push_back(dir / ("step" + std::to_string(s) + "-w" + std::to_string(w) + ".safetensors"));
    EXPECT_TRUE(test::write_tensors(paths.back(), halves[w]).ok());
  }
  return paths;
}

class SyncWriters : public Sync {
 protected:
  Result<PublishResult> publish_half(int step, uint32_t writer) {
    PublishOptions o;
    o.writers = 2;
    o.writer_index = writer;
    o.anchor_every = 3;
    o.snapshot_path = dir_ / ("snapshot-w" + std::to_string(writer));
    o.patch.threads = 2;
    return publish(*store_, split_step(dir_, step)[writer], o);
  }
};

TEST_F(SyncWriters, AVersionAppearsOnlyWhenBothHalvesAreInAndPullsBitIdentical) {
  for (int s = 0; s <= 5; ++s) {
    const uint32_t first = static_cast<uint32_t>(s % 2);  // alternate which writer finishes the version
    auto a = publish_half(s, first);
    ASSERT_TRUE(a.ok()) << "step " << s << ": " << a.status().to_string();
    EXPECT_FALSE(a->committed);
    EXPECT_EQ(a->version, static_cast<uint64_t>(s));
    auto versions = list_versions(*store_);
    ASSERT_TRUE(versions.ok());
    EXPECT_EQ(versions->size(), static_cast<size_t>(s)) << "version " << s << " is visible with one half in";
    // The same writer cannot run ahead of the version it is part of.
    auto again = publish_half(s, first);
    EXPECT_EQ(again.status().code(), ErrorCode::kExists) << again.status().to_string();
    auto b = publish_half(s, 1 - first);
    ASSERT_TRUE(b.ok()) << "step " << s << ": " << b.status().to_string();
    EXPECT_TRUE(b->committed);
    EXPECT_EQ(b->version, static_cast<uint64_t>(s));
    auto m = read_manifest(*store_, static_cast<uint64_t>(s));
    ASSERT_TRUE(m.ok()) << m.status().to_string();
    EXPECT_EQ(m->writers, 2u);
    EXPECT_EQ(m->has_anchor, s % 3 == 0);
    EXPECT_EQ(m->base_version.has_value(), s > 0);
    EXPECT_EQ(m->state_digest, state_of(test::trajectory_step(s))) << "the merged digest is the whole model's";
  }
  // Receivers from every starting version, through deltas and anchors, end bit-identical to step 5.
  for (int from = -1; from <= 4; ++from) {
    const std::string local = from < 0 ? dir_ / "fresh" : local_at(from, "from" + std::to_string(from));
    auto r = pull(*store_, local, {});
    ASSERT_TRUE(r.ok()) << "from " << from << ": " << r.status().to_string();
    EXPECT_EQ(r->version, 5u);
    EXPECT_TRUE(test::same_tensors(local, test::trajectory_step(5))) << "from " << from;
  }
  auto report = verify_store(*store_, std::nullopt, true, 2);
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->problems.empty()) << report->problems.front();
}

TEST_F(SyncWriters, AMergerThatDiedIsReplacedByTheNextPublish) {
  ASSERT_TRUE(publish_half(0, 0).ok());
  ASSERT_TRUE(publish_half(0, 1).ok());
  ASSERT_TRUE(publish_half(1, 0).ok());
  ASSERT_TRUE(publish_half(1, 1).ok());
  // Version 1's merger dies before its commit: both parts are in, the manifest is not.
  ASSERT_TRUE(store_->remove(object_key(1, "delta")).ok());
  ASSERT_TRUE(store_->remove("versions/00000000000000000001/manifest.json").ok());
  ASSERT_EQ(list_versions(*store_)->size(), 1u);
  // The next publish finishes version 1 first, then sends its part of version 2.
  auto r = publish_half(2, 1);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->version, 2u);
  EXPECT_FALSE(r->committed);
  ASSERT_EQ(list_versions(*store_)->size(), 2u);
  ASSERT_TRUE(publish_half(2, 0).ok());
  auto pulled = pull(*store_, dir_ / "recv", {});
  ASSERT_TRUE(pulled.ok()) << pulled.status().to_string();
  EXPECT_EQ(pulled->version, 2u);
  EXPECT_TRUE(test::same_tensors(dir_ / "recv", test::trajectory_step(2)));
}

TEST_F(SyncWriters, DisagreeingWriterCountsAndOverlappingTensorsAreRefused) {
  ASSERT_TRUE(publish_half(0, 0).ok());
  PublishOptions o;
  o.writers = 3;
  o.writer_index = 1;
  o.snapshot_path = dir_ / "snap3";
  auto r = publish(*store_, split_step(dir_, 0)[1], o);
  EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument) << r.status().to_string();
  // Writer 1 sending writer 0's tensors: the merge finds the same names twice.
  o.writers = 2;
  r = publish(*store_, split_step(dir_, 0)[0], o);
  EXPECT_EQ(r.status().code(), ErrorCode::kDuplicate) << r.status().to_string();
  EXPECT_TRUE(list_versions(*store_)->empty());
  o.writer_index = 2;
  EXPECT_EQ(publish(*store_, split_step(dir_, 0)[1], o).status().code(), ErrorCode::kInvalidArgument);
}

TEST_F(SyncWriters, PublishingAStepTwiceIsIdempotent) {
  auto with_step = [&](int content, uint32_t writer, uint64_t step) {
    PublishOptions o;
    o.writers = 2;
    o.writer_index = writer;
    o.snapshot_path = dir_ / ("snapshot-w" + std::to_string(writer));
    o.step = step;
    return publish(*store_, split_step(dir_, content)[writer], o);
  };
  ASSERT_TRUE(with_step(0, 0, 10).ok());
  auto pending = with_step(0, 0, 10);  // a rerun while our part waits: nothing new
  ASSERT_TRUE(pending.ok()) << pending.status().to_string();
  EXPECT_TRUE(pending->already_published);
  EXPECT_FALSE(pending->committed);
  auto other = with_step(1, 1, 11);  // the other writer at another step is refused
  ASSERT_FALSE(other.ok());
  EXPECT_EQ(other.status().code(), ErrorCode::kInvalidArgument);
  // Our own next step while our part of step 10 waits: we are a version ahead, so it waits (E_EXISTS,
  // which the Python publisher retries), not a step disagreement.
  auto ahead = with_step(1, 0, 11);
  EXPECT_EQ(ahead.status().code(), ErrorCode::kExists) << ahead.status().to_string();
  ASSERT_TRUE(with_step(0, 1, 10).ok());
  ASSERT_EQ(list_versions(*store_)->size(), 1u);
  for (uint32_t w : {0u, 1u}) {  // reruns after the commit: nothing new
    auto again = with_step(0, w, 10);
    ASSERT_TRUE(again.ok()) << again.status().to_string();
    EXPECT_TRUE(again->already_published);
    EXPECT_TRUE(again->committed);
    EXPECT_EQ(again->version, 0u);
  }
  EXPECT_EQ(list_versions(*store_)->size(), 1u);
  EXPECT_EQ(read_manifest(*store_, 0)->step, std::optional<uint64_t>(10));

  // The single-writer publish honours it too.
  auto single = open_store(dir_ / "single");
  ASSERT_TRUE(single.ok());
  PublishOptions o;
  o.snapshot_path = dir_ / "snap-single.safetensors";
  o.step = 7;
  ASSERT_TRUE(publish(**single, test::trajectory_step(0), o).ok());
  auto again = publish(**single, test::trajectory_step(0), o);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->already_published);
  EXPECT_EQ(list_versions(**single)->size(), 1u);
}

TEST_F(SyncWriters, KilledWritersNeverLeaveAPartialVersionAndRerunsComplete) {
  // Two writer processes publish the halves of each step with --step; at a random moment one or both
  // are killed with SIGKILL. After every kill the store verifies, and the latest version, if it moved,
  // is the whole step (its state digest equals the unsplit checkpoint's). Rerunning the killed writers
  // (a supervisor restarting a rank) completes the step exactly once.
  std::mt19937_64 rng(71);
  const std::string store = dir_ / "store";
  std::vector<std::vector<std::string>> halves(9);
  std::vector<std::string> whole_digest(9);
  for (int s = 0; s <= 8; ++s) {
    halves[static_cast<size_t>(s)] = split_step(dir_, s);
    whole_digest[static_cast<size_t>(s)] = state_of(test::trajectory_step(s));
  }
  auto argv = [&](int content, uint32_t writer, uint64_t step) {
    return std::vector<std::string>{DWS_CLI_PATH, "-q", "publish", store, halves[static_cast<size_t>(content)][writer],
                                    "--writer", std::to_string(writer) + "/2", "--snapshot", dir_ / ("snap-w" + std::to_string(writer)),
                                    "--step", std::to_string(step), "--anchor-every", "3"};
  };
  auto latest = [&]() -> std::optional<VersionManifest> {
    auto v = list_versions(*store_);
    EXPECT_TRUE(v.ok());
    if (v->empty()) return std::nullopt;
    auto m = read_manifest(*store_, v->back());
    EXPECT_TRUE(m.ok());
    return *m;
  };
  int killed = 0, moved_while_killed = 0;
  const int trials = kill_trials();
  for (int trial = 0; trial < trials; ++trial) {
    const int content = trial % 9;
    const uint64_t step = static_cast<uint64_t>(trial) + 1;
    SCOPED_TRACE("trial " + std::to_string(trial));
    const auto before = latest();
    pid_t pids[2];
    for (uint32_t w = 0; w < 2; ++w) pids[w] = test::spawn(argv(content, w, step), dir_ / ("log-w" + std::to_string(w)));
    const int victims = static_cast<int>(rng() % 3);  // 0: writer 0, 1: writer 1, 2: both
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 50000));
    for (uint32_t w = 0; w < 2; ++w) {
      if (victims == 2 || victims == static_cast<int>(w)) ::kill(pids[w], SIGKILL);
    }
    for (uint32_t w = 0; w < 2; ++w) {
      int status = 0;
      ::waitpid(pids[w], &status, 0);
      killed += WIFSIGNALED(status) ? 1 : 0;
    }
    auto report = verify_store(*store_, std::nullopt, false, 1);
    ASSERT_TRUE(report.ok());
    ASSERT_TRUE(report->ok()) << report->problems.front();
    const auto now = latest();
    if (now && (!before || now->version != before->version)) {
      ++moved_while_killed;
      EXPECT_EQ(now->step, std::optional<uint64_t>(step));
      EXPECT_EQ(now->state_digest, whole_digest[static_cast<size_t>(content)]);
    }
    // The supervisor reruns both writers; whatever survived the kill, the step commits exactly once.
    for (uint32_t w = 0; w < 2; ++w) {
      auto args = argv(content, w, step);
      args.erase(args.begin());
      auto r = test::run_cli(args);
      ASSERT_EQ(r.exit_code, 0) << "rerun of writer " << w << ": " << r.output;
    }
    const auto done = latest();
    ASSERT_TRUE(done.has_value());
    EXPECT_EQ(done->step, std::optional<uint64_t>(step));
    EXPECT_EQ(done->state_digest, whole_digest[static_cast<size_t>(content)]);
    EXPECT_EQ(done->version, before ? before->version + 1 : 0u) << "the step was published more than once";
  }
  auto report = verify_store(*store_, std::nullopt, true, 2);
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->ok()) << report->problems.front();
  auto r = pull(*store_, dir_ / "recv", {});
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_TRUE(test::same_tensors(dir_ / "recv", test::trajectory_step((trials - 1) % 9)));
  std::printf("[ info ] multi-writer publish: %d writer runs killed, the version moved in %d of %d trials before the rerun\n",
              killed, moved_while_killed, trials);
}

}  // namespace
}  // namespace dws
