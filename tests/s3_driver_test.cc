// The S3 driver beyond the store conformance suite: where its configuration comes from (no server
// needed), and, against the ctest fixture's real SeaweedFS, multipart uploads and parallel ranged
// downloads, their progress reports, their memory bound, and the error an unreachable endpoint gives.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>
#include <random>

#include "dws/store.h"
#include "dws/sync.h"
#include "store/s3_config.h"
#include "test_util.h"

namespace dws {
namespace {

using test::TempDir;

// Sets environment variables for one scope and restores them after (the S3 configuration reads them).
class ScopedEnv {
 public:
  ScopedEnv(std::initializer_list<std::pair<const char*, const char*>> vars) {
    for (const auto& [name, value] : vars) {
      const char* old = std::getenv(name);
      saved_.emplace_back(name, old ? std::optional<std::string>(old) : std::nullopt);
      if (value) ::setenv(name, value, 1);
      else ::unsetenv(name);
    }
  }
  ~ScopedEnv() {
    for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) {
      if (it->second) ::setenv(it->first.c_str(), it->second->c_str(), 1);
      else ::unsetenv(it->first.c_str());
    }
  }

 private:
  std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};

// Every variable S3Config reads, cleared, with HOME pointing at `home` (so ~/.aws is under our control).
ScopedEnv clean_aws_env(const std::string& home) {
  return ScopedEnv({{"HOME", home.c_str()}, {"AWS_PROFILE", nullptr}, {"AWS_SHARED_CREDENTIALS_FILE", nullptr},
                    {"AWS_CONFIG_FILE", nullptr}, {"AWS_ENDPOINT_URL", nullptr}, {"AWS_ENDPOINT_URL_S3", nullptr},
                    {"AWS_REGION", nullptr}, {"AWS_DEFAULT_REGION", nullptr}, {"AWS_ACCESS_KEY_ID", nullptr},
                    {"AWS_SECRET_ACCESS_KEY", nullptr}, {"AWS_SESSION_TOKEN", nullptr}, {"DWS_S3_ADDRESSING", nullptr},
                    {"DWS_S3_INSECURE", nullptr}, {"DWS_S3_RETRY_SECONDS", nullptr}, {"DWS_S3_PART_MB", nullptr},
                    {"DWS_S3_CONCURRENCY", nullptr}});
}

void write_text(const std::string& path, const std::string& text) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream(path) << text;
}

TEST(S3Config, DefaultsAreAwsWithVirtualHostsVerifiedTlsAndNoCredentials) {
  TempDir home;
  auto env = clean_aws_env(home.path());
  auto c = S3Config::from_uri("s3://my-bucket/some/prefix/");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->bucket, "my-bucket");
  EXPECT_EQ(c->prefix, "some/prefix");
  EXPECT_EQ(c->region, "us-east-1");
  EXPECT_EQ(c->endpoint, "https://s3.us-east-1.amazonaws.com");
  EXPECT_FALSE(c->path_style);
  EXPECT_TRUE(c->verify_tls);
  EXPECT_TRUE(c->access_key.empty());
  EXPECT_EQ(c->credentials_source, "none");
  EXPECT_EQ(c->part_size_bytes, 16ull << 20);
  EXPECT_EQ(c->concurrency, 8u);
}

TEST(S3Config, TheCredentialsFileProfileAndConfigFileAreRead) {
  TempDir home;
  auto env = clean_aws_env(home.path());
  write_text(home / ".aws/credentials",
             "# comment\n[default]\naws_access_key_id = DEFAULTKEY\naws_secret_access_key = defaultsecret\n\n"
             "[train]\naws_access_key_id=TRAINKEY\naws_secret_access_key=trainsecret\naws_session_token = tok\n");
  write_text(home / ".aws/config",
             "[default]\nregion = eu-west-1\n[profile train]\nregion = ap-south-1\nendpoint_url = http://store.internal:8333\n"
             "s3 =\n  addressing_style = virtual\n");
  auto d = S3Config::from_uri("s3://b");
  ASSERT_TRUE(d.ok()) << d.status().to_string();
  EXPECT_EQ(d->access_key, "DEFAULTKEY");
  EXPECT_EQ(d->secret_key, "defaultsecret");
  EXPECT_EQ(d->region, "eu-west-1");
  EXPECT_EQ(d->credentials_source, home / ".aws/credentials" + " [default]");

  ScopedEnv profile({{"AWS_PROFILE", "train"}});
  auto t = S3Config::from_uri("s3://b");
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  EXPECT_EQ(t->access_key, "TRAINKEY");
  EXPECT_EQ(t->session_token, "tok");
  EXPECT_EQ(t->region, "ap-south-1");
  EXPECT_EQ(t->endpoint, "http://store.internal:8333");
  EXPECT_TRUE(t->path_style) << "an explicit endpoint defaults to path-style addressing";

  // The environment comes before the files; the endpoint argument (CLI --endpoint) before everything.
  ScopedEnv over({{"AWS_ACCESS_KEY_ID", "ENVKEY"}, {"AWS_SECRET_ACCESS_KEY", "envsecret"}, {"AWS_REGION", "us-west-2"},
                  {"AWS_ENDPOINT_URL", "http://env:1"}});
  auto e = S3Config::from_uri("s3://b", "http://flag:2/");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->access_key, "ENVKEY");
  EXPECT_TRUE(e->session_token.empty()) << "a session token from the file must not pair with keys from the environment";
  EXPECT_EQ(e->credentials_source, "environment");
  EXPECT_EQ(e->region, "us-west-2");
  EXPECT_EQ(e->endpoint, "http://flag:2");
}

TEST(S3Config, MistakesAreRefusedNamingTheSettingAndValue) {
  TempDir home;
  auto env = clean_aws_env(home.path());
  const auto refused = [](const char* what, const std::string& needle, const std::string& endpoint = "") {
    auto c = S3Config::from_uri("s3://b/p", endpoint);
    ASSERT_FALSE(c.ok()) << what;
    EXPECT_EQ(c.status().code(), ErrorCode::kInvalidArgument) << what;
    EXPECT_NE(c.status().message().find(needle), std::string::npos) << what << ": " << c.status().to_string();
  };
  {
    ScopedEnv e({{"AWS_PROFILE", "nope"}});
    refused("unknown profile", "AWS_PROFILE='nope'");
  }
  {
    ScopedEnv e({{"AWS_ACCESS_KEY_ID", "K"}});
    refused("key without secret", "AWS_SECRET_ACCESS_KEY");
  }
  {
    write_text(home / "creds", "[default]\naws_access_key_id = K\n");
    ScopedEnv e({{"AWS_SHARED_CREDENTIALS_FILE", (home / "creds").c_str()}});
    refused("file key without secret", "no aws_secret_access_key");
  }
  {
    ScopedEnv e({{"DWS_S3_PART_MB", "4"}});
    refused("part below S3's 5 MiB minimum", "DWS_S3_PART_MB='4'");
  }
  {
    ScopedEnv e({{"DWS_S3_CONCURRENCY", "0"}});
    refused("no concurrency", "DWS_S3_CONCURRENCY='0'");
  }
  {
    ScopedEnv e({{"DWS_S3_RETRY_SECONDS", "soon"}});
    refused("retry seconds", "DWS_S3_RETRY_SECONDS='soon'");
  }
  refused("endpoint scheme", "ftp://x", "ftp://x");
  EXPECT_EQ(open_store("/tmp/x", StoreOptions{.endpoint = "http://a:1"}).status().code(), ErrorCode::kInvalidArgument)
      << "an endpoint for a directory store is a mistake";
}

// Opens a fixture store with small parts, so that a few MiB exercise multipart and ranged transfers.
std::unique_ptr<Store> fixture_store_with(const std::string& what, StoreOptions options, const char* part_mb, const char* concurrency) {
  ScopedEnv e({{"DWS_S3_PART_MB", part_mb}, {"DWS_S3_CONCURRENCY", concurrency}});
  return test::open_fixture_s3_store(what, options);
}

std::vector<std::byte> random_bytes(size_t n, uint64_t seed) {
  std::vector<std::byte> out(n);
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i < n; i += 8) {
    const uint64_t v = rng();
    std::memcpy(out.data() + i, &v, std::min<size_t>(8, n - i));
  }
  return out;
}

TEST(S3Driver, LargeObjectsGoUpInPartsAndComeDownInRangesIntact) {
  std::mutex mu;
  std::map<std::pair<std::string, bool>, std::pair<uint64_t, uint64_t>> last;  // (key, upload) -> (done, total)
  bool overshoot = false;
  StoreOptions o;
  o.on_progress = [&](const TransferProgress& p) {
    std::lock_guard lock(mu);
    overshoot |= p.bytes_done > p.bytes_total;
    last[{std::string(p.key), p.upload}] = {p.bytes_done, p.bytes_total};
  };
  auto store = fixture_store_with("multipart", o, "5", "4");
  if (!store) {
    if (test::s3_required()) FAIL() << "no S3 fixture";
    GTEST_SKIP() << "no S3 fixture: run through ctest, which starts SeaweedFS";
  }
  TempDir dir;
  const size_t size = (23u << 20) + 12345;  // 5 parts, the last one short
  const auto data = random_bytes(size, 1);
  test::write_bytes(dir / "in", data);
  ASSERT_TRUE(store->put_file("big/file", dir / "in").ok());
  ASSERT_TRUE(store->put("big/memory", data).ok());
  for (const char* key : {"big/file", "big/memory"}) {
    auto info = store->stat(key);
    ASSERT_TRUE(info.ok() && info->has_value()) << key;
    EXPECT_EQ((*info)->size_bytes, size) << key;
    const std::string out = dir / (std::string("out-") + (key + 4));
    ASSERT_TRUE(store->get_file(key, out).ok()) << key;
    EXPECT_TRUE(test::read_bytes(out) == data) << key << " came back different";
    auto mid = store->get_range(key, (5u << 20) - 3, 10);  // across a part boundary
    ASSERT_TRUE(mid.ok());
    EXPECT_TRUE(std::equal(mid->begin(), mid->end(), data.begin() + (5u << 20) - 3)) << key;
  }
  // Small objects still take one request, and a failed download leaves no file behind.
  ASSERT_TRUE(store->put("small", std::span(data).first(100)).ok());
  ASSERT_TRUE(store->get_file("small", dir / "small").ok());
  EXPECT_EQ(test::read_bytes(dir / "small").size(), 100u);
  EXPECT_EQ(store->get_file("absent", dir / "absent").code(), ErrorCode::kNotFound);
  EXPECT_FALSE(std::filesystem::exists(dir / "absent"));

  std::lock_guard lock(mu);
  EXPECT_FALSE(overshoot);
  for (const auto& [key, upload] : {std::pair{"big/file", true}, {"big/memory", true}, {"big/file", false}, {"big/memory", false}}) {
    auto it = last.find({key, upload});
    ASSERT_NE(it, last.end()) << key << (upload ? " upload" : " download") << " reported no progress";
    EXPECT_EQ(it->second.first, size) << key;
    EXPECT_EQ(it->second.second, size) << key;
  }
}

uint64_t status_kib(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field, 0) == 0) return std::strtoull(line.c_str() + std::strlen(field), nullptr, 10);
  }
  return 0;
}

TEST(S3Driver, TransfersStreamWithMemoryBoundedByTheBuffersNotTheObject) {
  auto store = fixture_store_with("memory", {}, "5", "8");
  if (!store) {
    if (test::s3_required()) FAIL() << "no S3 fixture";
    GTEST_SKIP() << "no S3 fixture: run through ctest, which starts SeaweedFS";
  }
  TempDir dir;
  const size_t size = 96u << 20;
  test::write_bytes(dir / "in", random_bytes(size, 2));
  // Peak resident memory, reset (Linux: "5" to clear_refs) right before the transfers.
  std::ofstream("/proc/self/clear_refs") << "5";
  const uint64_t before_kib = status_kib("VmRSS:");
  ASSERT_TRUE(store->put_file("big", dir / "in").ok());
  ASSERT_TRUE(store->get_file("big", dir / "out").ok());
  const uint64_t peak_kib = status_kib("VmHWM:");
  const uint64_t growth_kib = peak_kib > before_kib ? peak_kib - before_kib : 0;
  std::printf("96 MiB up and down, 8 parts in flight: peak resident growth %llu KiB\n", static_cast<unsigned long long>(growth_kib));
  // The documented bound: 16 MiB for 8 parts in flight (docs/store.md), against 96 MiB an object buffer would need.
  EXPECT_LT(growth_kib, 16u << 10);
  EXPECT_EQ(std::filesystem::file_size(dir / "out"), size);
}

TEST(S3Driver, AnUnreachableEndpointIsUnavailableAfterBoundedRetries) {
  TempDir home;
  auto env = clean_aws_env(home.path());
  ScopedEnv e({{"DWS_S3_RETRY_SECONDS", "1.5"}, {"AWS_ACCESS_KEY_ID", "k"}, {"AWS_SECRET_ACCESS_KEY", "s"}});
  auto store = open_store("s3://bucket/p", StoreOptions{.endpoint = "http://127.0.0.1:1"});  // nothing listens on port 1
  ASSERT_TRUE(store.ok());
  const auto t0 = std::chrono::steady_clock::now();
  auto r = (*store)->list("versions/");
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kUnavailable) << r.status().to_string();
  EXPECT_NE(r.status().message().find("cannot reach http://127.0.0.1:1"), std::string::npos) << r.status().to_string();
  EXPECT_NE(r.status().message().find("attempts"), std::string::npos) << r.status().to_string();
  EXPECT_GT(seconds, 1.4) << "gave up before DWS_S3_RETRY_SECONDS";
  EXPECT_LT(seconds, 5.0) << "retried past DWS_S3_RETRY_SECONDS";
}

}  // namespace
}  // namespace dws

namespace dws {
namespace {

TEST(S3Driver, AFollowerOutlivesAnUnavailableStore) {
  TempDir home;
  auto env = clean_aws_env(home.path());
  ScopedEnv e({{"DWS_S3_RETRY_SECONDS", "0.2"}});
  auto store = open_store("s3://bucket/p", StoreOptions{.endpoint = "http://127.0.0.1:1"});
  ASSERT_TRUE(store.ok());
  int pulls = 0;
  std::vector<Status> outages;
  FollowOptions o;
  o.poll_seconds = 0.01;
  o.keep_going = [&] { return outages.size() < 3 && ++pulls < 100; };
  o.on_unavailable = [&](const Status& st) { outages.push_back(st); };
  EXPECT_TRUE(follow(**store, home / "local.safetensors", o).ok());
  ASSERT_EQ(outages.size(), 3u) << "every failed poll is reported, and the loop goes on";
  EXPECT_EQ(outages[0].code(), ErrorCode::kUnavailable);
  // Without a listener the outage is still outlived; any other failure ends the loop.
  pulls = 0;
  o.on_unavailable = nullptr;
  o.keep_going = [&] { return ++pulls < 6; };
  EXPECT_TRUE(follow(**store, home / "local.safetensors", o).ok());
  ScopedEnv denied({{"AWS_ACCESS_KEY_ID", "k"}, {"AWS_SECRET_ACCESS_KEY", "s"}});
  auto fixture = test::open_fixture_s3_store("follow-denied");
  if (fixture) {
    ::setenv("AWS_SECRET_ACCESS_KEY", "wrong", 1);
    auto wrong = open_store(fixture->describe());
    ASSERT_TRUE(wrong.ok());
    pulls = 0;
    EXPECT_EQ(follow(**wrong, home / "local.safetensors", o).code(), ErrorCode::kDenied);
  }
}

TEST(S3Cli, EndpointFlagAndProgressLineOnRequestQuietOnAPipe) {
  auto probe = test::open_fixture_s3_store("cli");  // loads the fixture's environment
  if (!probe) {
    if (test::s3_required()) FAIL() << "no S3 fixture";
    GTEST_SKIP() << "no S3 fixture: run through ctest, which starts SeaweedFS";
  }
  if (!test::trajectory_available()) GTEST_SKIP() << "no trajectory-small";
  const std::string endpoint = std::getenv("AWS_ENDPOINT_URL");
  const std::string uri = probe->describe();
  TempDir dir;
  // The endpoint comes from --endpoint alone: the environment points nowhere useful.
  ScopedEnv e({{"AWS_ENDPOINT_URL", "http://127.0.0.1:1"}, {"DWS_S3_PART_MB", "5"}});
  auto pub = test::run_cli({"publish", uri, test::trajectory_step(0), "--endpoint", endpoint, "--progress", "on", "--snapshot",
                            dir / "snap.safetensors"});
  ASSERT_EQ(pub.exit_code, 0) << pub.output;
  EXPECT_NE(pub.output.find("dws: uploaded 8.06 MiB of 8.06 MiB (1/1 objects)"), std::string::npos) << pub.output;
  EXPECT_NE(pub.output.find(" in "), std::string::npos) << "no duration: " << pub.output;
  EXPECT_EQ(pub.output.find("downloaded"), std::string::npos) << "the publisher downloaded its own anchor again: " << pub.output;
  // Default --progress auto: stderr is a file here, so no progress line.
  auto pulled = test::run_cli({"pull", uri, dir / "local.safetensors", "--endpoint", endpoint});
  ASSERT_EQ(pulled.exit_code, 0) << pulled.output;
  EXPECT_EQ(pulled.output.find("downloaded 8"), std::string::npos) << pulled.output;
  EXPECT_TRUE(test::same_tensors(dir / "local.safetensors", test::trajectory_step(0)));
  // Without --endpoint the environment's dead endpoint is used, and that is E_UNAVAILABLE (exit 8).
  ScopedEnv fast({{"DWS_S3_RETRY_SECONDS", "0.3"}});
  auto dead = test::run_cli({"log", uri});
  EXPECT_EQ(dead.exit_code, 8) << dead.output;
  EXPECT_NE(dead.output.find("E_UNAVAILABLE"), std::string::npos) << dead.output;
  auto bad = test::run_cli({"log", uri, "--progress", "sometimes"});
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
}

}  // namespace
}  // namespace dws
