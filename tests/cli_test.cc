// The CLI as a user meets it: exit codes (docs/cli.md), messages, JSON output.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "test_util.h"

namespace dws {
namespace {

using test::run_cli;
using test::TempDir;

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    std::mt19937_64 rng(61);
    base_ = {test::random_tensor(rng, "emb", DType::kBF16, {1000, 8}), test::random_tensor(rng, "norm", DType::kF32, {512})};
    for (const auto& t : base_) next_.push_back(test::mutate(rng, t, 0.01));
    ASSERT_TRUE(test::write_tensors(dir_ / "base.safetensors", base_).ok());
    ASSERT_TRUE(test::write_tensors(dir_ / "next.safetensors", next_).ok());
  }
  TempDir dir_;
  std::vector<test::HostTensor> base_, next_;
};

TEST_F(Cli, ClassPositionsFlagWritesAnApplicablePatch) {
  if (!test::trajectory_available()) GTEST_SKIP();
  auto plain = run_cli({"diff", test::trajectory_step(0), test::trajectory_step(1), "-o", dir_ / "a.dwsp"});
  auto cls = run_cli({"diff", test::trajectory_step(0), test::trajectory_step(1), "-o", dir_ / "c.dwsp", "--class-positions"});
  ASSERT_EQ(plain.exit_code, 0) << plain.output;
  ASSERT_EQ(cls.exit_code, 0) << cls.output;
  EXPECT_LT(std::filesystem::file_size(dir_ / "c.dwsp"), std::filesystem::file_size(dir_ / "a.dwsp"));
  auto a = run_cli({"apply", test::trajectory_step(0), dir_ / "c.dwsp", "-o", dir_ / "out.safetensors"});
  ASSERT_EQ(a.exit_code, 0) << a.output;
  EXPECT_TRUE(test::same_tensors(dir_ / "out.safetensors", test::trajectory_step(1)));
}

TEST_F(Cli, DiffApplyInspectVerify) {
  auto d = run_cli({"diff", dir_ / "base.safetensors", dir_ / "next.safetensors", "-o", dir_ / "p.dwsp", "--encoding", "indices"});
  ASSERT_EQ(d.exit_code, 0) << d.output;
  EXPECT_NE(d.output.find("bytes/changed element"), std::string::npos) << d.output;
  auto a = run_cli({"apply", dir_ / "base.safetensors", dir_ / "p.dwsp", "-o", dir_ / "out.safetensors"});
  ASSERT_EQ(a.exit_code, 0) << a.output;
  EXPECT_TRUE(test::same_tensors(dir_ / "out.safetensors", dir_ / "next.safetensors"));

  auto i = run_cli({"inspect", "--json", dir_ / "p.dwsp"});
  ASSERT_EQ(i.exit_code, 0) << i.output;
  auto doc = nlohmann::json::parse(i.output);
  EXPECT_EQ(doc["kind"], "patch");
  EXPECT_EQ(doc["encoding"], "indices");
  ASSERT_EQ(doc["tensors"].size(), 2u);
  // indices: an int32 position plus the raw value per change.
  for (const auto& t : doc["tensors"]) EXPECT_DOUBLE_EQ(t["bytes_per_change"].get<double>(), t["dtype"] == "F32" ? 8.0 : 6.0);
  auto c = run_cli({"inspect", "--json", dir_ / "base.safetensors"});
  ASSERT_EQ(c.exit_code, 0) << c.output;
  EXPECT_EQ(nlohmann::json::parse(c.output)["tensors"].size(), 2u);
  EXPECT_EQ(run_cli({"inspect", dir_ / "p.dwsp"}).exit_code, 0);

  auto v = run_cli({"verify", dir_ / "p.dwsp"});
  EXPECT_EQ(v.exit_code, 0) << v.output;
  auto vc = run_cli({"verify", dir_ / "out.safetensors"});
  EXPECT_EQ(vc.exit_code, 0) << vc.output;
  EXPECT_NE(vc.output.find("state digest"), std::string::npos);
}

TEST_F(Cli, ExitCodes) {
  EXPECT_EQ(run_cli({}).exit_code, 2);
  EXPECT_EQ(run_cli({"frobnicate"}).exit_code, 2);
  auto bad_enc = run_cli({"diff", dir_ / "base.safetensors", dir_ / "next.safetensors", "-o", dir_ / "p", "--encoding", "lz4"});
  EXPECT_EQ(bad_enc.exit_code, 2);
  EXPECT_NE(bad_enc.output.find("lz4"), std::string::npos) << bad_enc.output;
  auto missing = run_cli({"verify", dir_ / "nope.safetensors"});
  EXPECT_EQ(missing.exit_code, 5) << missing.output;

  ASSERT_EQ(run_cli({"diff", dir_ / "base.safetensors", dir_ / "next.safetensors", "-o", dir_ / "p.dwsp"}).exit_code, 0);
  // Wrong base: exit 4, the message names the tensor, and nothing is written.
  auto wrong = run_cli({"apply", dir_ / "next.safetensors", dir_ / "p.dwsp", "-o", dir_ / "out.safetensors"});
  EXPECT_EQ(wrong.exit_code, 4) << wrong.output;
  EXPECT_NE(wrong.output.find("tensor '"), std::string::npos) << wrong.output;
  EXPECT_FALSE(std::filesystem::exists(dir_ / "out.safetensors"));
  // Existing output: exit 5 unless --force.
  test::write_bytes(dir_ / "exists.safetensors", std::vector<std::byte>(1));
  EXPECT_EQ(run_cli({"apply", dir_ / "base.safetensors", dir_ / "p.dwsp", "-o", dir_ / "exists.safetensors"}).exit_code, 5);
  EXPECT_EQ(run_cli({"apply", dir_ / "base.safetensors", dir_ / "p.dwsp", "-o", dir_ / "exists.safetensors", "--force"}).exit_code, 0);
  // Neither or both of -o / --in-place.
  EXPECT_EQ(run_cli({"apply", dir_ / "base.safetensors", dir_ / "p.dwsp"}).exit_code, 2);
  // A corrupt patch: exit 3.
  auto bytes = test::read_bytes(dir_ / "p.dwsp");
  bytes[bytes.size() - 3] ^= std::byte{0xFF};
  test::write_bytes(dir_ / "bad.dwsp", bytes);
  auto corrupt = run_cli({"apply", dir_ / "base.safetensors", dir_ / "bad.dwsp", "-o", dir_ / "o2.safetensors"});
  EXPECT_EQ(corrupt.exit_code, 3) << corrupt.output;
  EXPECT_NE(corrupt.output.find("E_PAYLOAD_HASH"), std::string::npos) << corrupt.output;
  EXPECT_EQ(run_cli({"verify", dir_ / "bad.dwsp"}).exit_code, 3);
  // recover on a clean checkpoint is a no-op.
  EXPECT_EQ(run_cli({"recover", dir_ / "base.safetensors"}).exit_code, 0);
}

}  // namespace
}  // namespace dws

namespace dws {
namespace {

// The store commands as a user meets them: exit codes, messages, JSON.
TEST(CliStore, PublishPullLogVerifyFoldGc) {
  if (!test::trajectory_available()) GTEST_SKIP();
  test::TempDir dir;
  const std::string store = dir / "store", snap = dir / "snap.safetensors";
  for (int s = 0; s <= 3; ++s) {
    auto r = test::run_cli({"publish", store, test::trajectory_step(s), "--snapshot", snap, "--anchor-every", "2",
                            "--notify", "http://127.0.0.1:1"});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("published version " + std::to_string(s)), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("warning: notify"), std::string::npos) << "an unreachable receiver is a warning: " << r.output;
  }
  auto pull = test::run_cli({"pull", store, dir / "local.safetensors", "--version", "1"});
  ASSERT_EQ(pull.exit_code, 0) << pull.output;
  EXPECT_NE(pull.output.find("at version 1"), std::string::npos) << pull.output;
  pull = test::run_cli({"pull", store, dir / "local.safetensors"});
  ASSERT_EQ(pull.exit_code, 0) << pull.output;
  EXPECT_TRUE(test::same_tensors(dir / "local.safetensors", test::trajectory_step(3)));
  EXPECT_EQ(test::run_cli({"pull", store, dir / "x.safetensors", "--version", "9"}).exit_code, 5);
  EXPECT_EQ(test::run_cli({"pull", store, dir / "x.safetensors", "--listen", ":0"}).exit_code, 2);

  auto log = test::run_cli({"log", store, "--json"});
  ASSERT_EQ(log.exit_code, 0) << log.output;
  auto doc = nlohmann::json::parse(log.output);
  ASSERT_EQ(doc["versions"].size(), 4u);
  EXPECT_EQ(doc["versions"][2]["kind"], "anchor+delta");
  EXPECT_EQ(doc["versions"][1]["kind"], "delta");
  EXPECT_EQ(doc["versions"][1]["changes"], 17067u);  // step 0 -> 1

  EXPECT_EQ(test::run_cli({"verify", store, "--full"}).exit_code, 0);
  ASSERT_EQ(test::run_cli({"fold", store, "--from", "0", "--to", "2"}).exit_code, 0);
  EXPECT_EQ(test::run_cli({"fold", store, "--from", "0", "--to", "2"}).exit_code, 5) << "the fold exists";
  auto gc = test::run_cli({"gc", store, "--keep-last", "1", "--dry-run"});
  ASSERT_EQ(gc.exit_code, 0) << gc.output;
  EXPECT_NE(gc.output.find("would delete 2 version(s)"), std::string::npos) << gc.output;

  // Corrupt one object: verify names it and exits 4.
  for (const auto& e : std::filesystem::recursive_directory_iterator(store)) {
    if (e.path().filename() == "delta.dwsp" && e.path().string().find("00000000000000000003") != std::string::npos) {
      auto bytes = test::read_bytes(e.path().string());
      bytes[bytes.size() / 2] ^= std::byte{1};
      test::write_bytes(e.path().string(), bytes);
    }
  }
  auto v = test::run_cli({"verify", store});
  EXPECT_EQ(v.exit_code, 4) << v.output;
  EXPECT_NE(v.output.find("version 3"), std::string::npos) << v.output;
  EXPECT_NE(v.output.find("delta.dwsp"), std::string::npos) << v.output;
}

}  // namespace
}  // namespace dws
