// Authenticated versions (dws/auth.h): a receiver holding the trainer's key takes only versions the
// trainer signed, refuses every unsigned, foreign or altered one with E_AUTH and its checkpoint stays as
// it was; the secret never appears in the store, in messages or in the CLI's output.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "dws/auth.h"
#include "dws/sync.h"
#include "sync/keys.h"
#include "test_util.h"

namespace dws {
namespace {

using test::TempDir;

constexpr std::string_view kSecret = "trainer-secret-0123456789abcdef";  // 31 bytes
constexpr std::string_view kOtherSecret = "another-secret-0123456789abcdef";

AuthKey key_of(std::string_view secret) {
  auto k = AuthKey::from_secret(std::as_bytes(std::span(secret.data(), secret.size())));
  EXPECT_TRUE(k.ok()) << k.status().to_string();
  return std::move(k).value();
}

std::string text_of(const std::vector<std::byte>& bytes) { return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size()); }

TEST(AuthKey, SecretsAreBoundedAndKeysIdentifiedWithoutRevealingThem) {
  const std::string short_secret(AuthKey::kMinSecretBytes - 1, 'x');
  auto k = AuthKey::from_secret(std::as_bytes(std::span(short_secret.data(), short_secret.size())));
  EXPECT_EQ(k.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(k.status().message().find(short_secret), std::string::npos) << "the error repeats the secret";
  const std::string huge(AuthKey::kMaxSecretBytes + 1, 'x');
  EXPECT_EQ(AuthKey::from_secret(std::as_bytes(std::span(huge.data(), huge.size()))).status().code(), ErrorCode::kInvalidArgument);

  const AuthKey a = key_of(kSecret), a2 = key_of(kSecret), b = key_of(kOtherSecret);
  EXPECT_EQ(a.id().size(), 16u);
  EXPECT_EQ(a.id(), a2.id());
  EXPECT_NE(a.id(), b.id());
  EXPECT_EQ(a.id().find("trainer"), std::string::npos);
  // The MAC is plain HMAC-SHA256: the value Python's hmac module gives for the same key and message.
  const AuthKey known = key_of("0123456789abcdef");
  EXPECT_EQ(known.sign("what do ya want for nothing?"), "e9265dc1bf18d4ec36915d9e82226c7ea0fa4e7f8077f611515bd5e29ec9988c");
  const std::string mac = a.sign("message");
  EXPECT_TRUE(a.verify("message", mac));
  EXPECT_FALSE(a.verify("messagf", mac));
  EXPECT_FALSE(b.verify("message", mac));
  EXPECT_FALSE(a.verify("message", mac.substr(1)));
}

TEST(AuthKey, FromFileStripsOneNewlineAndNamesOnlyThePath) {
  TempDir dir;
  std::ofstream(dir / "s") << kSecret << "\n";
  auto k = AuthKey::from_file(dir / "s");
  ASSERT_TRUE(k.ok()) << k.status().to_string();
  EXPECT_EQ(k->id(), key_of(kSecret).id());
  std::ofstream(dir / "crlf") << kSecret << "\r\n";
  EXPECT_EQ(AuthKey::from_file(dir / "crlf")->id(), key_of(kSecret).id());
  auto missing = AuthKey::from_file(dir / "nope");
  EXPECT_EQ(missing.status().code(), ErrorCode::kNotFound);
  EXPECT_NE(missing.status().message().find(dir / "nope"), std::string::npos);
  std::ofstream(dir / "short") << "tooshort\n";
  auto s = AuthKey::from_file(dir / "short");
  EXPECT_EQ(s.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(s.status().message().find("tooshort"), std::string::npos);
}

class AuthSync : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!test::trajectory_available()) GTEST_SKIP() << "shared/data/trajectory-small not present";
    store_ = std::move(open_store(dir_ / "store")).value();
  }
  Result<PublishResult> publish_step(int step, const AuthKey* auth, uint64_t anchor_every = 16) {
    PublishOptions o;
    o.anchor_every = anchor_every;
    o.snapshot_path = dir_ / "snapshot.safetensors";
    o.patch.threads = 2;
    o.auth = auth;
    return publish(*store_, test::trajectory_step(step), o);
  }
  Result<PullResult> pull_with(const std::string& local, const AuthKey* auth, std::optional<uint64_t> version = std::nullopt) {
    PullOptions o;
    o.threads = 2;
    o.auth = auth;
    o.version = version;
    return pull(*store_, local, o);
  }
  std::string manifest_path(uint64_t v) { return dir_ / ("store/" + manifest_key(v)); }
  TempDir dir_;
  std::unique_ptr<Store> store_;
};

TEST_F(AuthSync, SignedVersionsPullWithTheKeyAndStayReadableWithoutIt) {
  const AuthKey key = key_of(kSecret);
  for (int s = 0; s <= 4; ++s) ASSERT_TRUE(publish_step(s, &key, 3).ok()) << s;
  auto m = read_manifest(*store_, 4, &key);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  for (const auto& f : m->files) EXPECT_EQ(f.sha256.size(), 64u) << f.key;
  const std::string text = text_of(test::read_bytes(manifest_path(4)));
  EXPECT_EQ(text.find(kSecret), std::string::npos);
  EXPECT_NE(text.find(key.id()), std::string::npos);
  // From nothing (anchor 3 + delta 4) and from version 1 (the chain), with the key.
  for (std::optional<uint64_t> from : {std::optional<uint64_t>(), std::optional<uint64_t>(1)}) {
    const std::string local = dir_ / ("l" + std::to_string(from.value_or(99)));
    if (from) ASSERT_TRUE(pull_with(local, &key, from).ok());
    auto r = pull_with(local, &key);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    EXPECT_EQ(r->version, 4u);
    EXPECT_TRUE(test::same_tensors(local, test::trajectory_step(4)));
  }
  // A receiver without a key reads signed versions as any others.
  ASSERT_TRUE(pull_with(dir_ / "nokey", nullptr).ok());
  auto report = verify_store(*store_, std::nullopt, true, 2, &key);
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->ok()) << report->problems.front();
}

TEST_F(AuthSync, UnsignedAndForeignVersionsAreRefusedAndTheLocalCopyStays) {
  const AuthKey key = key_of(kSecret), other = key_of(kOtherSecret);
  ASSERT_TRUE(publish_step(0, &key).ok());
  const std::string local = dir_ / "local";
  ASSERT_TRUE(pull_with(local, &key).ok());
  const auto before = test::read_bytes(local);
  // Someone with write access but another key (or none) publishes version 1.
  ASSERT_TRUE(publish_step(1, &other).ok() == false) << "a publisher with another key chained onto our version";
  PublishOptions o;
  o.snapshot_path = dir_ / "intruder-snapshot";
  o.patch.threads = 2;
  auto intruder = publish(*store_, test::trajectory_step(1), o);  // unsigned
  ASSERT_TRUE(intruder.ok()) << intruder.status().to_string();
  auto r = pull_with(local, &key);
  ASSERT_EQ(r.status().code(), ErrorCode::kAuth) << r.status().to_string();
  EXPECT_NE(r.status().message().find("not signed"), std::string::npos) << r.status().to_string();
  EXPECT_EQ(test::read_bytes(local), before);
  auto v = local_version(local);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->value_or(99), 0u);
  // The trainer itself refuses to publish on top of the forged version.
  EXPECT_EQ(publish_step(2, &key).status().code(), ErrorCode::kAuth);
  // Signed with another key: the message names both key ids and neither secret.
  std::filesystem::remove(manifest_path(1));
  ASSERT_TRUE(publish_step(1, &other).status().code() == ErrorCode::kAuth);  // version 0 is ours, not `other`'s
  VersionManifest forged = *read_manifest(*store_, 0);
  forged.version = 1;
  forged.base_version = 0;
  forged.base_state_digest = forged.state_digest;
  forged.has_anchor = false;
  forged.files.clear();
  forged.files.push_back({version_prefix(1) + "x/delta.dwsp", "delta", "", 10, std::string(32, '0'), std::string(64, '0')});
  const std::string foreign = serialize_manifest(forged, &other);
  test::write_bytes(manifest_path(1), std::as_bytes(std::span(foreign.data(), foreign.size())));
  r = pull_with(local, &key);
  ASSERT_EQ(r.status().code(), ErrorCode::kAuth);
  EXPECT_NE(r.status().message().find(other.id()), std::string::npos) << r.status().to_string();
  EXPECT_NE(r.status().message().find(key.id()), std::string::npos) << r.status().to_string();
  EXPECT_EQ(r.status().message().find(kSecret), std::string::npos);
  EXPECT_EQ(r.status().message().find(kOtherSecret), std::string::npos);
  EXPECT_EQ(test::read_bytes(local), before);
  auto report = verify_store(*store_, std::nullopt, false, 2, &key);
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->problems.size(), 1u);
}

TEST_F(AuthSync, AlteredManifestsAndFilesAreRefused) {
  const AuthKey key = key_of(kSecret);
  ASSERT_TRUE(publish_step(0, &key).ok());
  ASSERT_TRUE(publish_step(1, &key).ok());
  const std::string local = dir_ / "local";
  ASSERT_TRUE(pull_with(local, &key, 0).ok());
  const auto before = test::read_bytes(local);
  const std::string original = text_of(test::read_bytes(manifest_path(1)));
  auto put_manifest = [&](const nlohmann::json& doc) {
    const std::string t = doc.dump(1);
    test::write_bytes(manifest_path(1), std::as_bytes(std::span(t.data(), t.size())));
  };
  // Every field of the signed document, altered one at a time, keeping the signature.
  const nlohmann::json doc = nlohmann::json::parse(original);
  int altered = 0;
  for (const auto& [field, value] : doc.items()) {
    if (field == "auth") continue;
    nlohmann::json bad = doc;
    if (value.is_number_unsigned()) bad[field] = value.get<uint64_t>() + 1;
    else if (value.is_boolean()) bad[field] = !value.get<bool>();
    else if (value.is_string()) bad[field] = value.get<std::string>() == std::string(32, '0') ? std::string(32, '1') : std::string(32, '0');
    else if (value.is_array()) bad[field][0]["size_bytes"] = bad[field][0]["size_bytes"].get<uint64_t>() + 1;
    put_manifest(bad);
    auto m = read_manifest(*store_, 1, &key);
    EXPECT_EQ(m.status().code(), ErrorCode::kAuth) << field << ": " << m.status().to_string();
    ++altered;
  }
  EXPECT_GE(altered, 9);
  // The signature removed, or its mac flipped in one digit.
  nlohmann::json unsigned_doc = doc;
  unsigned_doc.erase("auth");
  put_manifest(unsigned_doc);
  EXPECT_EQ(read_manifest(*store_, 1, &key).status().code(), ErrorCode::kAuth);
  nlohmann::json flipped = doc;
  std::string mac = flipped["auth"]["mac"];
  mac[10] = mac[10] == '0' ? '1' : '0';
  flipped["auth"]["mac"] = mac;
  put_manifest(flipped);
  EXPECT_EQ(read_manifest(*store_, 1, &key).status().code(), ErrorCode::kAuth);
  // The same content reformatted keeps its signature (what is signed is the content, not the layout).
  put_manifest(doc);
  EXPECT_TRUE(read_manifest(*store_, 1, &key).ok());
  // A correctly signed manifest whose file's SHA-256 is not the object's: only whoever holds the key
  // could write it, but the check must still catch a file swapped under a signed manifest.
  VersionManifest m = *read_manifest(*store_, 1, &key);
  m.files[0].sha256[0] = m.files[0].sha256[0] == 'a' ? 'b' : 'a';
  const std::string resigned = serialize_manifest(m, &key);
  test::write_bytes(manifest_path(1), std::as_bytes(std::span(resigned.data(), resigned.size())));
  auto r = pull_with(local, &key);
  EXPECT_EQ(r.status().code(), ErrorCode::kAuth) << r.status().to_string();
  EXPECT_EQ(test::read_bytes(local), before);
  test::write_bytes(manifest_path(1), std::as_bytes(std::span(original.data(), original.size())));
  r = pull_with(local, &key);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_TRUE(test::same_tensors(local, test::trajectory_step(1)));
}

TEST_F(AuthSync, FoldsAreSignedAndUnsignedOnesIgnored) {
  const AuthKey key = key_of(kSecret);
  for (int s = 0; s <= 5; ++s) ASSERT_TRUE(publish_step(s, &key).ok());
  CreatePatchOptions o;
  o.threads = 2;
  ASSERT_TRUE(fold(*store_, 1, 5, dir_.path(), o).ok());  // an unsigned fold (made without the key)
  const std::string local = dir_ / "local";
  ASSERT_TRUE(pull_with(local, &key, 1).ok());
  auto r = pull_with(local, &key);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_FALSE(r->used_fold) << "an unsigned fold was taken by a receiver holding the key";
  EXPECT_TRUE(test::same_tensors(local, test::trajectory_step(5)));
  ASSERT_TRUE(fold(*store_, 2, 5, dir_.path(), o, &key).ok());
  const std::string at2 = dir_ / "at2";
  ASSERT_TRUE(pull_with(at2, &key, 2).ok());
  r = pull_with(at2, &key);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_TRUE(r->used_fold);
  EXPECT_TRUE(test::same_tensors(at2, test::trajectory_step(5)));
}

TEST_F(AuthSync, SeveralWritersSignTheirPartsAndTheMergedVersion) {
  std::mt19937_64 rng(7);
  std::vector<test::HostTensor> halves[2] = {{test::random_tensor(rng, "a", DType::kBF16, {4096})},
                                             {test::random_tensor(rng, "b", DType::kBF16, {2048})}};
  const AuthKey key = key_of(kSecret);
  for (int step = 0; step < 3; ++step) {
    for (uint32_t w = 0; w < 2; ++w) {
      if (step > 0) halves[w][0] = test::mutate(rng, halves[w][0], 0.01);
      const std::string path = dir_ / ("w" + std::to_string(w) + ".safetensors");
      ASSERT_TRUE(test::write_tensors(path, halves[w]).ok());
      PublishOptions o;
      o.writers = 2;
      o.writer_index = w;
      o.snapshot_path = dir_ / ("snap" + std::to_string(w));
      o.auth = &key;
      auto r = publish(*store_, path, o);
      ASSERT_TRUE(r.ok()) << r.status().to_string();
      EXPECT_EQ(r->committed, w == 1);
    }
    ASSERT_TRUE(read_manifest(*store_, static_cast<uint64_t>(step), &key).ok());
  }
  auto r = pull_with(dir_ / "local", &key);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->version, 2u);
  auto report = verify_store(*store_, std::nullopt, true, 2, &key);
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->ok()) << report->problems.front();
}

TEST_F(AuthSync, TheCliSignsAndRefusesWithoutEverPrintingTheSecret) {
  std::ofstream(dir_ / "secret") << kSecret << "\n";
  std::ofstream(dir_ / "other") << kOtherSecret << "\n";
  const std::string store = dir_ / "cli-store", snap = dir_ / "cli-snap";
  std::string all;
  auto run = [&](std::vector<std::string> args) {
    auto r = test::run_cli(args);
    all += r.output;
    return r;
  };
  for (int s = 0; s <= 2; ++s) {
    auto r = run({"publish", store, test::trajectory_step(s), "--snapshot", snap, "--secret-file", dir_ / "secret"});
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  auto ok = run({"pull", store, dir_ / "cli-local", "--secret-file", dir_ / "secret"});
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
  auto wrong = run({"pull", store, dir_ / "cli-other", "--secret-file", dir_ / "other"});
  EXPECT_EQ(wrong.exit_code, 9) << wrong.output;
  EXPECT_NE(wrong.output.find("E_AUTH"), std::string::npos) << wrong.output;
  auto verify_wrong = run({"verify", store, "--secret-file", dir_ / "other"});
  EXPECT_NE(verify_wrong.exit_code, 0) << verify_wrong.output;
  auto verify_ok = run({"verify", store, "--secret-file", dir_ / "secret"});
  EXPECT_EQ(verify_ok.exit_code, 0) << verify_ok.output;
  auto log = run({"log", store, "--json", "--secret-file", dir_ / "other"});
  EXPECT_EQ(log.exit_code, 0) << log.output;
  EXPECT_NE(log.output.find("E_AUTH"), std::string::npos) << log.output;
  auto missing = run({"pull", store, dir_ / "cli-x", "--secret-file", dir_ / "missing"});
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_NE(missing.output.find(dir_ / "missing"), std::string::npos) << missing.output;
  EXPECT_EQ(all.find(kSecret), std::string::npos) << "the secret was printed";
  EXPECT_EQ(all.find(kOtherSecret), std::string::npos) << "the secret was printed";
}

}  // namespace
}  // namespace dws
