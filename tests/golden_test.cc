// The must-fail golden corpus (tests/golden/, written by make_golden.py): every hostile file is refused
// with exactly the error code its name starts with, and a refused patch leaves its target untouched (in
// place: byte for byte, no journal; to a new file: not created). The valid files the cases were made
// from must be accepted, so each refusal is the hostile edit's doing.
#include <gtest/gtest.h>

#include <filesystem>

#include "dws/auth.h"
#include "dws/checkpoint.h"
#include "dws/patch.h"
#include "dws/sync.h"
#include "test_util.h"

namespace dws {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

const fs::path kGolden = fs::path(DWS_GOLDEN_DIR);

struct Case {
  fs::path path;
  std::string expected;  // "E_NAME", or "" for a valid file
  bool signed_reader = false;
};

std::vector<Case> cases(const std::string& kind) {
  std::vector<Case> out;
  for (const auto& e : fs::directory_iterator(kGolden / kind)) {
    std::string name = e.path().filename().string();
    Case c{e.path(), "", false};
    if (name.rfind("signed-", 0) == 0) {
      c.signed_reader = true;
      name = name.substr(7);
    }
    const size_t sep = name.find("--");
    if (sep != std::string::npos) c.expected = name.substr(0, sep);
    out.push_back(std::move(c));
  }
  std::sort(out.begin(), out.end(), [](const Case& a, const Case& b) { return a.path < b.path; });
  return out;
}

std::string code_name(const Status& st) { return st.ok() ? "OK" : std::string(error_code_name(st.code())); }

// Checks the case's outcome and counts it; the expected name must be a real error code.
void expect_outcome(const Case& c, const Status& st, size_t& refused, size_t& valid) {
  SCOPED_TRACE(c.path.filename().string());
  if (c.expected.empty()) {
    EXPECT_TRUE(st.ok()) << "a valid file is refused: " << st.to_string();
    ++valid;
    return;
  }
  bool known = false;
  for (int code = 1; code < 64; ++code) known |= error_code_name(static_cast<ErrorCode>(code)) == c.expected;
  EXPECT_TRUE(known) << c.expected << " is not an error code";
  EXPECT_EQ(code_name(st), c.expected) << st.to_string();
  EXPECT_FALSE(st.message().empty());
  ++refused;
}

TEST(Golden, HostileCheckpointsAreRefusedWithTheirCode) {
  size_t refused = 0, valid = 0;
  for (const Case& c : cases("checkpoint")) expect_outcome(c, Checkpoint::open(c.path.string()).status(), refused, valid);
  EXPECT_GE(refused, 15u);
  EXPECT_EQ(valid, 1u);
}

TEST(Golden, HostileIndexesAreRefusedWithTheirCode) {
  size_t refused = 0, valid = 0;
  for (const Case& c : cases("index")) {
    TempDir dir;
    fs::copy_file(kGolden / "checkpoint" / "valid.safetensors", dir / "valid.safetensors");
    fs::copy_file(c.path, dir / std::string(kIndexFileName));
    expect_outcome(c, Checkpoint::open(dir.path()).status(), refused, valid);
    EXPECT_TRUE(fs::exists(dir / "valid.safetensors"));
  }
  EXPECT_GE(refused, 3u);
  EXPECT_EQ(valid, 1u);
}

TEST(Golden, HostilePatchesAreRefusedWithTheirCodeAndTheTargetIsUntouched) {
  const auto base_bytes = test::read_bytes((kGolden / "base.safetensors").string());
  size_t refused = 0, valid = 0;
  for (const Case& c : cases("patch")) {
    SCOPED_TRACE(c.path.filename().string());
    TempDir dir;
    const std::string target = dir / "target.safetensors", out = dir / "out.safetensors";
    fs::copy_file(kGolden / "base.safetensors", target);
    Status st;
    auto patch = Patch::open(c.path.string());
    if (!patch.ok()) {
      st = patch.status();
    } else {
      auto applied = apply_patch_in_place(target, *patch, {1, false});
      st = applied.status();
      auto to_new = apply_patch(kGolden / "base.safetensors", *patch, out, {1, false});
      EXPECT_EQ(code_name(to_new.status()), code_name(st)) << "the two apply paths disagree";
      if (!st.ok()) {
        EXPECT_EQ(test::read_bytes(target), base_bytes) << "a refused patch changed its target";
        EXPECT_FALSE(fs::exists(journal_path_for(target)));
        EXPECT_FALSE(fs::exists(out)) << "a refused patch created its output";
      } else {
        EXPECT_TRUE(test::same_tensors(target, (kGolden / "next.safetensors").string()));
        EXPECT_TRUE(test::same_tensors(out, (kGolden / "next.safetensors").string()));
      }
    }
    expect_outcome(c, st, refused, valid);
  }
  EXPECT_GE(refused, 25u);
  EXPECT_EQ(valid, 4u);  // one valid patch per encoding the cases start from
}

TEST(Golden, HostileManifestsAreRefusedWithTheirCode) {
  auto key = AuthKey::from_file((kGolden / "golden.secret").string());
  ASSERT_TRUE(key.ok()) << key.status().to_string();
  size_t refused = 0, valid = 0;
  for (const Case& c : cases("manifest")) {
    const auto bytes = test::read_bytes(c.path.string());
    const std::string_view text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    expect_outcome(c, parse_manifest(text, c.signed_reader ? &*key : nullptr).status(), refused, valid);
  }
  EXPECT_GE(refused, 20u);
  EXPECT_EQ(valid, 2u);
}

}  // namespace
}  // namespace dws
