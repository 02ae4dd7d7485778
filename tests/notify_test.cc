// Notification: a poke wakes a waiting listener; tokens are enforced; non-loopback needs a token; a
// following receiver applies a new version as soon as the publisher pokes it.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "dws/notify.h"
#include "dws/sync.h"
#include "test_util.h"

namespace dws {
namespace {

std::string url_of(const NotifyListener& l) { return "http://127.0.0.1:" + std::to_string(l.port()); }

TEST(Notify, APokeWakesTheListener) {
  auto l = NotifyListener::start("127.0.0.1:0", "");
  ASSERT_TRUE(l.ok()) << l.status().to_string();
  EXPECT_FALSE((*l)->wait(0.05));
  EXPECT_TRUE(notify_receivers({url_of(**l)}, 7, "", 5).empty());
  EXPECT_TRUE((*l)->wait(10));
  EXPECT_EQ((*l)->notifications(), 1u);
  // Pokes that arrive between waits are not lost.
  EXPECT_TRUE(notify_receivers({url_of(**l), url_of(**l) + "/v1/notify"}, 8, "", 5).empty());
  EXPECT_TRUE((*l)->wait(0));
  EXPECT_FALSE((*l)->wait(0.01));
}

TEST(Notify, TokensAreRequiredWhenSet) {
  auto l = NotifyListener::start(":0", "s3cret");
  ASSERT_TRUE(l.ok()) << l.status().to_string();
  auto f = notify_receivers({url_of(**l)}, 1, "", 5);
  ASSERT_EQ(f.size(), 1u);
  EXPECT_NE(f[0].find("401"), std::string::npos) << f[0];
  EXPECT_EQ(notify_receivers({url_of(**l)}, 1, "wrong", 5).size(), 1u);
  EXPECT_EQ((*l)->refused(), 2u);
  EXPECT_FALSE((*l)->wait(0.01));
  EXPECT_TRUE(notify_receivers({url_of(**l)}, 1, "s3cret", 5).empty());
  EXPECT_TRUE((*l)->wait(10));
  EXPECT_EQ(f[0].find("s3cret"), std::string::npos);
}

TEST(Notify, BadAddressesAndExposureWithoutATokenAreRefused) {
  EXPECT_EQ(NotifyListener::start("0.0.0.0:0", "").status().code(), ErrorCode::kInvalidArgument);
  EXPECT_TRUE(NotifyListener::start("0.0.0.0:0", "tok").ok());
  EXPECT_EQ(NotifyListener::start("127.0.0.1", "").status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(NotifyListener::start("127.0.0.1:99999", "").status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(NotifyListener::start("127.0.0.1:12ab", "").status().code(), ErrorCode::kInvalidArgument);
  // A receiver that is not there: a failure line, not an exception or a hang.
  auto f = notify_receivers({"http://127.0.0.1:1"}, 1, "", 2);
  EXPECT_EQ(f.size(), 1u);
  EXPECT_EQ(notify_receivers({"not a url"}, 1, "", 1).size(), 1u);
}

// With a store poll interval of a minute, only the poke can make the follower apply within the test.
TEST(Notify, AFollowerAppliesAsSoonAsItIsPoked) {
  if (!test::trajectory_available()) GTEST_SKIP();
  test::TempDir dir;
  auto store = open_store(dir / "store");
  ASSERT_TRUE(store.ok());
  PublishOptions po;
  po.snapshot_path = dir / "snap.safetensors";
  ASSERT_TRUE(publish(**store, test::trajectory_step(0), po).ok());
  auto listener = NotifyListener::start("127.0.0.1:0", "");
  ASSERT_TRUE(listener.ok());
  std::atomic<uint64_t> reached{0};
  std::atomic<bool> stop{false};
  FollowOptions fo;
  fo.poll_seconds = 60;
  fo.listener = listener->get();
  fo.keep_going = [&] { return !stop.load(); };
  fo.on_pull = [&](const PullResult& r) { reached = r.version; };
  Status follow_status;
  std::thread follower([&] { follow_status = follow(**store, dir / "local.safetensors", fo); });
  for (int i = 0; i < 200 && reached.load() != 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  po.notify_urls = {url_of(**listener)};
  for (int step = 1; step <= 3; ++step) {
    auto r = publish(**store, test::trajectory_step(step), po);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    EXPECT_TRUE(r->notify_failures.empty());
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (reached.load() != static_cast<uint64_t>(step) && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    EXPECT_EQ(reached.load(), static_cast<uint64_t>(step));
  }
  stop = true;
  (void)notify_receivers({url_of(**listener)}, 0, "", 5);  // wake it to see the stop
  follower.join();
  EXPECT_TRUE(follow_status.ok()) << follow_status.to_string();
  EXPECT_TRUE(test::same_tensors(dir / "local.safetensors", test::trajectory_step(3)));
}

}  // namespace
}  // namespace dws
