// The store conformance suite: what every Store driver must do (dws/store.h, docs/store.md). A new
// driver adds a factory to StoreFactories() and must pass every test here unchanged.
#include <gtest/gtest.h>

#include <atomic>
#include <fstream>
#include <random>
#include <thread>

#include "dws/store.h"
#include "test_util.h"

namespace dws {
namespace {

using test::TempDir;

struct StoreFactory {
  std::string name;
  // Opens a fresh, empty store rooted under `scratch`.
  std::function<std::unique_ptr<Store>(const std::string& scratch)> open;
};

void PrintTo(const StoreFactory& f, std::ostream* os) { *os << f.name; }

std::vector<StoreFactory> StoreFactories() {
  return {{"dir", [](const std::string& scratch) {
             auto s = open_store(scratch + "/store");
             EXPECT_TRUE(s.ok()) << s.status().to_string();
             return std::move(s).value();
           }},
          {"s3", [](const std::string&) { return test::open_fixture_s3_store("conformance"); }}};
}

std::span<const std::byte> as_bytes(const std::string& s) { return {reinterpret_cast<const std::byte*>(s.data()), s.size()}; }
std::string as_string(const std::vector<std::byte>& b) { return {reinterpret_cast<const char*>(b.data()), b.size()}; }

class StoreConformance : public ::testing::TestWithParam<StoreFactory> {
 protected:
  void SetUp() override {
    store_ = GetParam().open(dir_.path());
    if (!store_) {
      if (test::s3_required()) FAIL() << "no S3 fixture (tests/s3/weed_fixture.py did not run)";
      GTEST_SKIP() << "no S3 fixture: run through ctest, which starts SeaweedFS";
    }
  }
  TempDir dir_;
  std::unique_ptr<Store> store_;
};

TEST_P(StoreConformance, PutGetStatOverwrite) {
  ASSERT_TRUE(store_->put("a/b/c.bin", as_bytes("hello")).ok());
  auto g = store_->get("a/b/c.bin", 100);
  ASSERT_TRUE(g.ok()) << g.status().to_string();
  EXPECT_EQ(as_string(*g), "hello");
  auto st = store_->stat("a/b/c.bin");
  ASSERT_TRUE(st.ok() && st->has_value());
  EXPECT_EQ((*st)->size_bytes, 5u);
  ASSERT_TRUE(store_->put("a/b/c.bin", as_bytes("bye")).ok());
  EXPECT_EQ(as_string(*store_->get("a/b/c.bin", 100)), "bye");
  ASSERT_TRUE(store_->put("empty", as_bytes("")).ok());
  EXPECT_EQ(store_->get("empty", 100)->size(), 0u);
}

TEST_P(StoreConformance, MissingObjects) {
  EXPECT_EQ(store_->get("nope", 100).status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(store_->get_range("nope", 0, 1).status().code(), ErrorCode::kNotFound);
  auto st = store_->stat("nope");
  ASSERT_TRUE(st.ok());
  EXPECT_FALSE(st->has_value());
  EXPECT_TRUE(store_->remove("nope").ok());
  EXPECT_EQ(store_->get_file("nope", dir_ / "x").code(), ErrorCode::kNotFound);
  EXPECT_FALSE(std::filesystem::exists(dir_ / "x"));
}

TEST_P(StoreConformance, GetRefusesObjectsAboveTheLimit) {
  ASSERT_TRUE(store_->put("big", as_bytes(std::string(1000, 'x'))).ok());
  EXPECT_EQ(store_->get("big", 999).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_TRUE(store_->get("big", 1000).ok());
}

TEST_P(StoreConformance, RangedReads) {
  ASSERT_TRUE(store_->put("r", as_bytes("0123456789")).ok());
  EXPECT_EQ(as_string(*store_->get_range("r", 2, 3)), "234");
  EXPECT_EQ(as_string(*store_->get_range("r", 0, 10)), "0123456789");
  EXPECT_EQ(store_->get_range("r", 10, 0)->size(), 0u);
  EXPECT_EQ(store_->get_range("r", 8, 3).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(store_->get_range("r", 11, 0).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(store_->get_range("r", 1, UINT64_MAX).status().code(), ErrorCode::kInvalidArgument);
}

TEST_P(StoreConformance, PutIfAbsentCommitsOnce) {
  ASSERT_TRUE(store_->put_if_absent("v/manifest", as_bytes("first")).ok());
  const Status again = store_->put_if_absent("v/manifest", as_bytes("second"));
  EXPECT_EQ(again.code(), ErrorCode::kExists) << again.to_string();
  EXPECT_EQ(as_string(*store_->get("v/manifest", 100)), "first");
}

TEST_P(StoreConformance, PutIfAbsentRaceHasOneWinner) {
  for (int round = 0; round < 20; ++round) {
    const std::string key = "race/" + std::to_string(round);
    std::atomic<int> wins{0}, exists{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        const Status st = store_->put_if_absent(key, as_bytes("writer " + std::to_string(t)));
        if (st.ok()) ++wins;
        else if (st.code() == ErrorCode::kExists) ++exists;
      });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(wins.load(), 1);
    EXPECT_EQ(exists.load(), 3);
  }
}

TEST_P(StoreConformance, ListIsSortedAndFilteredByPrefix) {
  for (const char* k : {"versions/002/m", "versions/001/m", "versions/001/x/y", "other/z", "versions0"}) {
    ASSERT_TRUE(store_->put(k, as_bytes(k)).ok());
  }
  auto l = store_->list("versions/");
  ASSERT_TRUE(l.ok()) << l.status().to_string();
  std::vector<std::string> keys;
  for (const auto& o : *l) keys.push_back(o.key);
  EXPECT_EQ(keys, (std::vector<std::string>{"versions/001/m", "versions/001/x/y", "versions/002/m"}));
  EXPECT_EQ((*l)[0].size_bytes, std::string("versions/001/m").size());
  auto all = store_->list("");
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->size(), 5u);
  auto none = store_->list("nothing/");
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
  ASSERT_TRUE(store_->remove("versions/001/m").ok());
  EXPECT_EQ(store_->list("versions/001/")->size(), 1u);
}

TEST_P(StoreConformance, KeysThatCouldEscapeAreRefused) {
  for (const std::string& k : {std::string(""), std::string("/abs"), std::string("a//b"), std::string("a/"), std::string("../x"),
                               std::string("a/../b"), std::string("./a"), std::string(".hidden"), std::string("a/.b"),
                               std::string("a\\b"), std::string("a b"), std::string("a\0b", 3), std::string(513, 'k')}) {
    EXPECT_EQ(store_->put(k, as_bytes("x")).code(), ErrorCode::kInvalidArgument) << "key '" << k << "'";
    EXPECT_EQ(store_->get(k, 10).status().code(), ErrorCode::kInvalidArgument) << "key '" << k << "'";
  }
  EXPECT_TRUE(check_store_key(std::string(512, 'k')).ok());
  EXPECT_TRUE(store_->list("").value().empty());
}

TEST_P(StoreConformance, FilesRoundTripAndDownloadsAreAtomic) {
  std::mt19937_64 rng(81);
  std::vector<std::byte> data(5 * 1024 * 1024 + 17);
  for (auto& b : data) b = static_cast<std::byte>(rng());
  test::write_bytes(dir_ / "src.bin", data);
  ASSERT_TRUE(store_->put_file("blobs/one", dir_ / "src.bin").ok());
  EXPECT_EQ(store_->stat("blobs/one")->value().size_bytes, data.size());
  ASSERT_TRUE(store_->get_file("blobs/one", dir_ / "dst.bin").ok());
  EXPECT_EQ(test::read_bytes(dir_ / "dst.bin"), data);
  auto r = store_->get_range("blobs/one", 4 * 1024 * 1024, 100);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(std::equal(r->begin(), r->end(), data.begin() + 4 * 1024 * 1024));
  // A missing source file fails without creating the object.
  EXPECT_FALSE(store_->put_file("blobs/two", dir_ / "missing.bin").ok());
  EXPECT_FALSE(store_->stat("blobs/two")->has_value());
  // No temp files or other debris is listed.
  EXPECT_EQ(store_->list("")->size(), 1u);
}

// A reader polling a key that a writer keeps replacing sees only complete objects.
TEST_P(StoreConformance, ReadersNeverSeeAPartialObject) {
  const size_t size = 256 * 1024;
  ASSERT_TRUE(store_->put("hot", as_bytes(std::string(size, 'a'))).ok());
  std::atomic<bool> done{false};
  std::atomic<int> bad{0}, reads{0};
  std::thread reader([&] {
    while (!done) {
      auto g = store_->get("hot", size);
      if (!g.ok()) {
        ++bad;
        continue;
      }
      ++reads;
      const std::byte first = (*g)[0];
      if (g->size() != size || std::any_of(g->begin(), g->end(), [&](std::byte b) { return b != first; })) ++bad;
    }
  });
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(store_->put("hot", as_bytes(std::string(size, static_cast<char>('a' + i % 26)))).ok());
  }
  done = true;
  reader.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_GT(reads.load(), 0);
}

// Listing while other writers add and remove objects (and the directories a driver may keep for them)
// never fails: objects that vanish mid-listing are simply absent.
TEST_P(StoreConformance, ListingDuringConcurrentRemovalsSucceeds) {
  std::atomic<int> running{2};
  auto churn_fn = [&](int t) {
    for (int i = 0; i < 1000; ++i) {
      const std::string key = "versions/" + std::to_string(i % 5) + "/t" + std::to_string(t) + "-" + std::to_string(i) + "/obj";
      (void)store_->put(key, as_bytes("x"));
      (void)store_->remove(key);
    }
    --running;
  };
  std::thread churn(churn_fn, 0), churn2(churn_fn, 1);
  auto done = [&] { return running.load() == 0; };
  int lists = 0;
  Status first_failure;
  while (!done()) {
    auto l = store_->list("versions/");
    if (!l.ok() && first_failure.ok()) first_failure = l.status();
    ++lists;
  }
  churn.join();
  churn2.join();
  EXPECT_TRUE(first_failure.ok()) << first_failure.to_string();
  EXPECT_GT(lists, 0);
  EXPECT_TRUE(store_->list("versions/")->empty());
}

INSTANTIATE_TEST_SUITE_P(Drivers, StoreConformance, ::testing::ValuesIn(StoreFactories()),
                         [](const auto& info) { return info.param.name; });

TEST(OpenStore, SchemesWithoutADriverAreUnsupported) {
  EXPECT_EQ(open_store("gopher://x").status().code(), ErrorCode::kUnsupported);
  // s3:// URIs are checked before any request: bucket names and prefixes follow their rules.
  EXPECT_EQ(open_store("s3://Bad_Bucket/p").status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(open_store("s3://bucket/../escape").status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(open_store("s3:///prefix").status().code(), ErrorCode::kInvalidArgument);
  TempDir dir;
  test::write_bytes(dir / "file", std::vector<std::byte>(3));
  EXPECT_EQ(open_store(dir / "file").status().code(), ErrorCode::kInvalidArgument);
  auto s = open_store("file://" + (dir / "st"));
  ASSERT_TRUE(s.ok());
  EXPECT_EQ((*s)->describe(), "dir:" + (dir / "st"));
}

}  // namespace
}  // namespace dws
