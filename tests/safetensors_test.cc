#include <gtest/gtest.h>

#include "test_util.h"

namespace dws {
namespace {

using test::HostTensor;
using test::TempDir;

std::vector<std::byte> make_file(const std::string& header, size_t data_bytes, uint64_t declared_len = UINT64_MAX) {
  const uint64_t n = declared_len == UINT64_MAX ? header.size() : declared_len;
  std::vector<std::byte> out(8 + header.size() + data_bytes, std::byte{0x5A});
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<std::byte>((n >> (8 * i)) & 0xFF);
  std::memcpy(out.data() + 8, header.data(), header.size());
  return out;
}

TEST(Safetensors, RoundTripsEveryDtypeAndShape) {
  TempDir dir;
  std::mt19937_64 rng(1);
  std::vector<HostTensor> tensors;
  int i = 0;
  for (DType dt : kAllDTypes) {
    tensors.push_back(test::random_tensor(rng, "t" + std::to_string(i++) + std::string(dtype_name(dt)), dt, {3, 5}));
  }
  tensors.push_back(test::random_tensor(rng, "scalar", DType::kF32, {}));      // 0-d: one element
  tensors.push_back(test::random_tensor(rng, "empty", DType::kBF16, {0, 7}));  // no elements
  tensors.push_back(test::random_tensor(rng, "empty1d", DType::kI64, {0}));
  FileMetadata meta{{"format", "pt"}, {"note", "ünïcode ✓"}};
  ASSERT_TRUE(test::write_tensors(dir / "a.safetensors", tensors, meta).ok());

  auto f = SafetensorsFile::open(dir / "a.safetensors");
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ(f->header().metadata, meta);
  EXPECT_EQ(f->header().data_offset() % 8, 0u) << "data section must start 8-byte aligned";
  ASSERT_EQ(f->header().tensors.size(), tensors.size());
  for (const auto& t : tensors) {
    const TensorInfo* info = f->header().find(t.name);
    ASSERT_NE(info, nullptr) << t.name;
    EXPECT_EQ(info->dtype, t.dtype);
    EXPECT_EQ(info->shape, t.shape);
    auto bytes = f->tensor_bytes(*info);
    ASSERT_EQ(bytes.size(), t.bytes.size());
    EXPECT_TRUE(bytes.empty() || std::memcmp(bytes.data(), t.bytes.data(), bytes.size()) == 0) << t.name;
  }
  EXPECT_EQ(f->header().find("scalar")->numel(), 1u);
  EXPECT_EQ(f->header().find("empty")->numel(), 0u);
  EXPECT_EQ(f->header().find("missing"), nullptr);
}

TEST(Safetensors, AcceptsTrailingSpacePaddingAndNoMetadata) {
  auto file = make_file(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}    )", 2);
  auto h = parse_safetensors(file);
  ASSERT_TRUE(h.ok()) << h.status().to_string();
  EXPECT_TRUE(h->metadata.empty());
  EXPECT_EQ(h->tensors.size(), 1u);
}

TEST(Safetensors, ReadsTheTrajectoryFiles) {
  if (!test::trajectory_available()) GTEST_SKIP() << "shared data not present";
  auto f = SafetensorsFile::open(test::trajectory_step(0));
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  uint64_t elements = 0;
  for (const auto& t : f->header().tensors) {
    EXPECT_EQ(t.dtype, DType::kBF16);
    elements += t.numel();
  }
  EXPECT_EQ(elements, 4224512u);  // documented in shared/data/README.md
  EXPECT_EQ(f->header().metadata.at("step"), "000");
}

struct BadHeader {
  const char* what;
  std::string header;
  size_t data_bytes;
  ErrorCode expected;
};

class HostileHeader : public ::testing::TestWithParam<BadHeader> {};

TEST_P(HostileHeader, IsRejectedWithItsCode) {
  const BadHeader& c = GetParam();
  auto file = make_file(c.header, c.data_bytes);
  auto h = parse_safetensors(file);
  ASSERT_FALSE(h.ok()) << c.what << " was accepted";
  EXPECT_EQ(h.status().code(), c.expected) << c.what << ": " << h.status().to_string();
  EXPECT_FALSE(h.status().message().empty());
}

const std::string kT = R"("dtype":"BF16","shape":[2])";

INSTANTIATE_TEST_SUITE_P(
    Cases, HostileHeader,
    ::testing::Values(
        BadHeader{"not starting with {", R"( {"a":{)" + kT + R"(,"data_offsets":[0,4]}})", 4, ErrorCode::kHeaderJson},
        BadHeader{"invalid json", R"({"a":{)" + kT + R"(,"data_offsets":[0,4]})", 4, ErrorCode::kHeaderJson},
        BadHeader{"unknown dtype", R"({"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,4]}})", 4, ErrorCode::kDtype},
        BadHeader{"negative dim", R"({"a":{"dtype":"BF16","shape":[-2],"data_offsets":[0,4]}})", 4, ErrorCode::kHeaderJson},
        BadHeader{"float dim", R"({"a":{"dtype":"BF16","shape":[2.0],"data_offsets":[0,4]}})", 4, ErrorCode::kHeaderJson},
        BadHeader{"size mismatch", R"({"a":{)" + kT + R"(,"data_offsets":[0,2]}})", 2, ErrorCode::kShape},
        BadHeader{"numel overflow", R"({"a":{"dtype":"BF16","shape":[4294967296,4294967296,2],"data_offsets":[0,4]}})", 4, ErrorCode::kShape},
        BadHeader{"bytes overflow", R"({"a":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,8]}})", 8, ErrorCode::kShape},
        BadHeader{"end beyond data", R"({"a":{)" + kT + R"(,"data_offsets":[0,4]}})", 3, ErrorCode::kOffsets},
        BadHeader{"begin after end", R"({"a":{)" + kT + R"(,"data_offsets":[4,0]}})", 4, ErrorCode::kOffsets},
        BadHeader{"overlap", R"({"a":{)" + kT + R"(,"data_offsets":[0,4]},"b":{)" + kT + R"(,"data_offsets":[2,6]}})", 6, ErrorCode::kOffsets},
        BadHeader{"hole", R"({"a":{)" + kT + R"(,"data_offsets":[0,4]},"b":{)" + kT + R"(,"data_offsets":[6,10]}})", 10, ErrorCode::kOffsets},
        BadHeader{"uncovered tail", R"({"a":{)" + kT + R"(,"data_offsets":[0,4]}})", 9, ErrorCode::kOffsets},
        BadHeader{"huge offset", R"({"a":{)" + kT + R"(,"data_offsets":[18446744073709551615,18446744073709551615]}})", 4, ErrorCode::kOffsets},
        BadHeader{"offset beyond u64", R"({"a":{)" + kT + R"(,"data_offsets":[0,99999999999999999999999]}})", 4, ErrorCode::kHeaderJson},
        BadHeader{"duplicate name", R"({"a":{)" + kT + R"(,"data_offsets":[0,4]},"a":{)" + kT + R"(,"data_offsets":[4,8]}})", 8, ErrorCode::kDuplicate},
        BadHeader{"duplicate field", R"({"a":{)" + kT + R"(,"dtype":"U8","data_offsets":[0,4]}})", 4, ErrorCode::kDuplicate},
        BadHeader{"metadata not strings", R"({"__metadata__":{"k":1},"a":{)" + kT + R"(,"data_offsets":[0,4]}})", 4, ErrorCode::kHeaderJson},
        BadHeader{"metadata not object", R"({"__metadata__":"x","a":{)" + kT + R"(,"data_offsets":[0,4]}})", 4, ErrorCode::kHeaderJson},
        BadHeader{"unknown field", R"({"a":{)" + kT + R"(,"data_offsets":[0,4],"extra":1}})", 4, ErrorCode::kHeaderJson},
        BadHeader{"missing offsets", R"({"a":{)" + kT + R"(}})", 4, ErrorCode::kHeaderJson},
        BadHeader{"three offsets", R"({"a":{)" + kT + R"(,"data_offsets":[0,4,4]}})", 4, ErrorCode::kHeaderJson},
        BadHeader{"tensor not object", R"({"a":[1,2]})", 0, ErrorCode::kHeaderJson},
        BadHeader{"empty name", R"({"":{)" + kT + R"(,"data_offsets":[0,4]}})", 4, ErrorCode::kHeaderJson},
        BadHeader{"invalid utf-8", "{\"a\xff\":{" + kT + R"(,"data_offsets":[0,4]}})", 4, ErrorCode::kHeaderJson},
        BadHeader{"rank 65", R"({"a":{"dtype":"U8","shape":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1],"data_offsets":[0,1]}})", 1, ErrorCode::kShape},
        BadHeader{"NUL in padding", R"({"a":{)" + kT + R"(,"data_offsets":[0,4]}})" + std::string("\0  ", 3), 4, ErrorCode::kHeaderJson},
        BadHeader{"NUL inside", std::string("{\"a\":{") + kT + std::string(",\"data_\0ffsets\":[0,4]}}", 24), 4, ErrorCode::kHeaderJson},
        BadHeader{"deep nesting", "{\"a\":" + std::string(100000, '[') + std::string(100000, ']') + "}", 0, ErrorCode::kHeaderJson}),
    [](const auto& info) {
      std::string n = info.param.what;
      for (char& ch : n) if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
      return n;
    });

TEST(Safetensors, RejectsBadHeaderLengths) {
  std::string h = R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})";
  EXPECT_EQ(parse_safetensors(make_file(h, 1, 1ull << 40)).status().code(), ErrorCode::kHeaderSize);      // above limit
  EXPECT_EQ(parse_safetensors(make_file(h, 1, h.size() + 2)).status().code(), ErrorCode::kHeaderSize);  // past the end
  EXPECT_EQ(parse_safetensors(make_file(h, 1, UINT64_MAX - 1)).status().code(), ErrorCode::kHeaderSize);
  std::vector<std::byte> tiny(5, std::byte{0});
  EXPECT_EQ(parse_safetensors(tiny).status().code(), ErrorCode::kHeaderSize);
}

TEST(Safetensors, EveryTruncationIsRejected) {
  TempDir dir;
  std::mt19937_64 rng(2);
  ASSERT_TRUE(test::write_tensors(dir / "a.safetensors", {test::random_tensor(rng, "x", DType::kF16, {7}),
                                                          test::random_tensor(rng, "y", DType::kU8, {3})}).ok());
  auto bytes = test::read_bytes(dir / "a.safetensors");
  for (size_t n = 0; n < bytes.size(); ++n) {
    auto h = parse_safetensors(std::span(bytes).first(n));
    EXPECT_FALSE(h.ok()) << "prefix of " << n << " bytes accepted";
  }
  EXPECT_TRUE(parse_safetensors(bytes).ok());
}

TEST(Safetensors, WriterRefusesBadInput) {
  TempDir dir;
  std::vector<std::byte> two(2);
  std::vector<TensorWrite> dup{{{"a", DType::kU8, {2}}, two}, {{"a", DType::kU8, {2}}, two}};
  EXPECT_EQ(write_safetensors(dir / "d.safetensors", dup, {}).code(), ErrorCode::kDuplicate);
  std::vector<TensorWrite> wrong{{{"a", DType::kBF16, {2}}, two}};
  EXPECT_EQ(write_safetensors(dir / "w.safetensors", wrong, {}).code(), ErrorCode::kShape);
  std::vector<TensorWrite> bad_utf8{{{"a\xff", DType::kU8, {2}}, two}};
  EXPECT_EQ(write_safetensors(dir / "u.safetensors", bad_utf8, {}).code(), ErrorCode::kInvalidArgument);
  EXPECT_FALSE(std::filesystem::exists(dir / "d.safetensors"));
  EXPECT_FALSE(std::filesystem::exists(dir / "w.safetensors"));
  EXPECT_FALSE(std::filesystem::exists(dir / "u.safetensors"));
  EXPECT_TRUE(std::filesystem::is_empty(dir.path())) << "no temp files left behind";
}

TEST(Checkpoint, OpensShardedDirectoriesAndChecksTheIndex) {
  TempDir dir;
  std::mt19937_64 rng(3);
  std::vector<HostTensor> tensors;
  for (int i = 0; i < 7; ++i) tensors.push_back(test::random_tensor(rng, "w" + std::to_string(i), DType::kBF16, {4, 3}));
  test::write_sharded(dir / "ck", tensors, 3);
  auto ck = Checkpoint::open(dir / "ck");
  ASSERT_TRUE(ck.ok()) << ck.status().to_string();
  EXPECT_TRUE(ck->is_directory());
  EXPECT_EQ(ck->shard_count(), 3u);
  EXPECT_EQ(ck->tensors().size(), 7u);
  EXPECT_NE(ck->find("w6"), nullptr);

  // An index that points a tensor at the wrong shard.
  std::ofstream(dir / "ck/model.safetensors.index.json")
      << R"({"weight_map":{"w0":"model-00002-of-00003.safetensors"}})";
  auto bad = Checkpoint::open(dir / "ck");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("but the index says"), std::string::npos) << bad.status().to_string();

  // An index whose shard name escapes the directory.
  std::ofstream(dir / "ck/model.safetensors.index.json") << R"({"weight_map":{"w0":"../evil.safetensors"}})";
  auto escape = Checkpoint::open(dir / "ck");
  ASSERT_FALSE(escape.ok());
  EXPECT_EQ(escape.status().code(), ErrorCode::kHeaderJson);
}

TEST(Checkpoint, RejectsAnIndexWithADuplicateKey) {
  // nlohmann alone keeps the last of two equal keys; an index naming a tensor twice must be refused.
  TempDir dir;
  std::mt19937_64 rng(6);
  std::filesystem::create_directories(dir / "ck");
  ASSERT_TRUE(test::write_tensors(dir / "ck/a.safetensors", {test::random_tensor(rng, "t", DType::kU8, {4})}).ok());
  std::ofstream(dir / "ck/model.safetensors.index.json")
      << R"({"weight_map":{"t":"b.safetensors","t":"a.safetensors"}})";
  auto ck = Checkpoint::open(dir / "ck");
  ASSERT_FALSE(ck.ok());
  EXPECT_EQ(ck.status().code(), ErrorCode::kDuplicate) << ck.status().to_string();
}

TEST(Checkpoint, RejectsATensorInTwoShards) {
  TempDir dir;
  std::mt19937_64 rng(4);
  auto t = test::random_tensor(rng, "same", DType::kU8, {4});
  std::filesystem::create_directories(dir / "ck");
  ASSERT_TRUE(test::write_tensors(dir / "ck/a.safetensors", {t}).ok());
  ASSERT_TRUE(test::write_tensors(dir / "ck/b.safetensors", {t}).ok());
  std::ofstream(dir / "ck/model.safetensors.index.json")
      << R"({"weight_map":{"same":"a.safetensors","x":"b.safetensors"}})";
  auto ck = Checkpoint::open(dir / "ck");
  ASSERT_FALSE(ck.ok());
}

TEST(Checkpoint, StateDigestIgnoresShardingButNotContent) {
  TempDir dir;
  std::mt19937_64 rng(5);
  std::vector<HostTensor> tensors;
  for (int i = 0; i < 5; ++i) tensors.push_back(test::random_tensor(rng, "w" + std::to_string(i), DType::kF32, {9}));
  ASSERT_TRUE(test::write_tensors(dir / "one.safetensors", tensors).ok());
  test::write_sharded(dir / "sharded", tensors, 2);
  auto a = Checkpoint::open(dir / "one.safetensors");
  auto b = Checkpoint::open(dir / "sharded");
  ASSERT_TRUE(a.ok() && b.ok());
  auto da = state_digest(tensor_digests(*a, 1));
  auto db = state_digest(tensor_digests(*b, 2));
  EXPECT_EQ(da, db);
  tensors[3].bytes[0] ^= std::byte{1};
  ASSERT_TRUE(test::write_tensors(dir / "flip.safetensors", tensors).ok());
  auto c = Checkpoint::open(dir / "flip.safetensors");
  ASSERT_TRUE(c.ok());
  EXPECT_NE(state_digest(tensor_digests(*c, 1)), da);
}

}  // namespace
}  // namespace dws
