// kill -9 at random moments of `dws apply --in-place` and `dws apply -o`: afterwards the checkpoint is
// the old one or (after `dws recover` when a journal was committed) the new one, never a mix; an output
// is absent or complete. 12 trials per mode by default; DWS_SOAK=1 runs 150.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "test_util.h"

namespace dws {
namespace {

using test::TempDir;

int trials() { return std::getenv("DWS_SOAK") && std::string(std::getenv("DWS_SOAK")) == "1" ? 150 : 12; }

class CrashSafety : public ::testing::Test {
 protected:
  void SetUp() override {
    // A model big enough that an apply takes tens of milliseconds: 6 x 2M bf16 elements, 1% changed.
    std::mt19937_64 rng(51);
    std::vector<test::HostTensor> base, next;
    for (int i = 0; i < 6; ++i) {
      base.push_back(test::random_tensor(rng, "w" + std::to_string(i), DType::kBF16, {2u << 20}));
      next.push_back(test::mutate(rng, base.back(), 0.01));
    }
    ASSERT_TRUE(test::write_tensors(dir_ / "base.safetensors", base, {{"step", "1"}}).ok());
    ASSERT_TRUE(test::write_tensors(dir_ / "next.safetensors", next, {{"step", "2"}}).ok());
    auto b = Checkpoint::open(dir_ / "base.safetensors");
    auto n = Checkpoint::open(dir_ / "next.safetensors");
    ASSERT_TRUE(create_patch(*b, *n, dir_ / "p.dwsp", {Encoding::kGapsZstd, 2, 1}).ok());
  }

  // Runs argv, kills it with SIGKILL after a random delay in [0, max_delay_us); returns true if it was
  // killed before it exited on its own.
  bool run_and_kill(const std::vector<std::string>& argv, std::mt19937_64& rng, int64_t max_delay_us) {
    pid_t pid = test::spawn(argv, dir_ / "log");
    EXPECT_GT(pid, 0);
    std::this_thread::sleep_for(std::chrono::microseconds(static_cast<int64_t>(rng() % static_cast<uint64_t>(max_delay_us))));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    return WIFSIGNALED(status);
  }

  int64_t measure_us(const std::vector<std::string>& argv) {
    auto t0 = std::chrono::steady_clock::now();
    pid_t pid = test::spawn(argv, dir_ / "log");
    int status = 0;
    ::waitpid(pid, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count();
  }

  TempDir dir_;
};

TEST_F(CrashSafety, KilledInPlaceApplyLeavesOldOrRecoverableNew) {
  std::mt19937_64 rng(52);
  const std::string live = dir_ / "live.safetensors";
  std::filesystem::copy_file(dir_ / "base.safetensors", live);
  const std::vector<std::string> argv{DWS_CLI_PATH, "apply", "--in-place", live, dir_ / "p.dwsp", "--threads", "1"};
  const int64_t full_us = measure_us(argv);
  int killed = 0, saw_old = 0, saw_recovered = 0;
  for (int t = 0; t < trials(); ++t) {
    std::filesystem::copy_file(dir_ / "base.safetensors", live, std::filesystem::copy_options::overwrite_existing);
    killed += run_and_kill(argv, rng, full_us * 11 / 10) ? 1 : 0;
    if (std::filesystem::exists(journal_path_for(live))) {
      // A committed journal: the checkpoint is not opened until it is recovered.
      EXPECT_EQ(Checkpoint::open(live).status().code(), ErrorCode::kPendingJournal);
      auto r = test::run_cli({"recover", live});
      ASSERT_EQ(r.exit_code, 0) << r.output;
      EXPECT_TRUE(test::same_tensors(live, dir_ / "next.safetensors")) << "trial " << t;
      ++saw_recovered;
    } else if (test::same_tensors(live, dir_ / "base.safetensors")) {
      ++saw_old;
    } else {
      EXPECT_TRUE(test::same_tensors(live, dir_ / "next.safetensors")) << "trial " << t << ": neither old nor new";
    }
  }
  std::printf("[ info ] in-place: %d trials, %d killed mid-run, %d left old, %d recovered from a journal (apply takes %lld us)\n",
              trials(), killed, saw_old, saw_recovered, static_cast<long long>(full_us));
}

TEST_F(CrashSafety, KilledApplyToNewFileLeavesNoPartialOutput) {
  std::mt19937_64 rng(53);
  const std::string out = dir_ / "out.safetensors";
  const std::vector<std::string> argv{DWS_CLI_PATH, "apply", dir_ / "base.safetensors", dir_ / "p.dwsp", "-o", out};
  const int64_t full_us = measure_us(argv);
  for (int t = 0; t < trials(); ++t) {
    std::filesystem::remove(out);
    run_and_kill(argv, rng, full_us * 11 / 10);
    if (std::filesystem::exists(out)) EXPECT_TRUE(test::same_tensors(out, dir_ / "next.safetensors")) << "trial " << t;
  }
}

TEST_F(CrashSafety, RecoverRefusesACorruptJournalWithoutTouchingTheCheckpoint) {
  const std::string live = dir_ / "live.safetensors";
  std::filesystem::copy_file(dir_ / "base.safetensors", live);
  const auto before = test::read_bytes(live);
  std::vector<std::byte> junk(100, std::byte{0x33});
  test::write_bytes(journal_path_for(live), junk);
  auto r = recover_checkpoint(live);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kDecode);
  EXPECT_EQ(test::read_bytes(live), before);
  auto cli = test::run_cli({"apply", "--in-place", live, dir_ / "p.dwsp"});
  EXPECT_EQ(cli.exit_code, 6) << cli.output;
  EXPECT_NE(cli.output.find("dws recover"), std::string::npos) << cli.output;
}

}  // namespace
}  // namespace dws
