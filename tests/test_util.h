// Shared helpers for the tests: temp directories, random tensors, checkpoint builders.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <memory>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "codec/codecs.h"
#include "dws/checkpoint.h"
#include "dws/patch.h"
#include "dws/safetensors.h"
#include "dws/store.h"

namespace dws::test {

inline std::string trajectory_step(int step) {
  char name[64];
  std::snprintf(name, sizeof name, "/step%03d.safetensors", step);
  return std::string(DWS_TRAJECTORY_DIR) + name;
}

inline bool trajectory_available() { return std::filesystem::exists(trajectory_step(0)); }

// A fresh directory under the system temp dir, removed with the object.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "dws-test-XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline std::vector<std::byte> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> c((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> out(c.size());
  if (!c.empty()) std::memcpy(out.data(), c.data(), c.size());
  return out;
}

inline void write_bytes(const std::string& path, std::span<const std::byte> bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

// An in-memory tensor.
struct HostTensor {
  std::string name;
  DType dtype = DType::kBF16;
  std::vector<uint64_t> shape;
  std::vector<std::byte> bytes;
};

inline HostTensor random_tensor(std::mt19937_64& rng, std::string name, DType dtype, std::vector<uint64_t> shape) {
  HostTensor t{std::move(name), dtype, std::move(shape), {}};
  t.bytes.resize(*checked_size_bytes(dtype, t.shape));
  for (auto& b : t.bytes) b = static_cast<std::byte>(rng() & 0xFF);
  return t;
}

// Copies `base` and re-randomizes about density*numel elements (each at least one bit different).
inline HostTensor mutate(std::mt19937_64& rng, const HostTensor& base, double density) {
  HostTensor t = base;
  const size_t w = dtype_size_bytes(base.dtype);
  const uint64_t n = t.bytes.size() / w;
  std::bernoulli_distribution pick(density);
  for (uint64_t i = 0; i < n; ++i) {
    if (density >= 1.0 || pick(rng)) {
      std::byte* e = t.bytes.data() + i * w;
      e[rng() % w] ^= static_cast<std::byte>(1 + rng() % 255);
    }
  }
  return t;
}

inline Status write_tensors(const std::string& path, const std::vector<HostTensor>& tensors, FileMetadata meta = {}) {
  std::vector<TensorWrite> writes;
  for (const auto& t : tensors) writes.push_back({{t.name, t.dtype, t.shape}, t.bytes});
  return write_safetensors(path, writes, meta);
}

// Writes a Hugging Face-style sharded directory: tensors split round-robin over `shards` files + index.
inline void write_sharded(const std::string& dir, const std::vector<HostTensor>& tensors, size_t shards) {
  std::filesystem::create_directories(dir);
  std::string weight_map;
  for (size_t s = 0; s < shards; ++s) {
    std::vector<HostTensor> part;
    char file[64];
    std::snprintf(file, sizeof file, "model-%05zu-of-%05zu.safetensors", s + 1, shards);
    for (size_t i = s; i < tensors.size(); i += shards) {
      part.push_back(tensors[i]);
      weight_map += std::string(weight_map.empty() ? "" : ",") + "\"" + tensors[i].name + "\":\"" + file + "\"";
    }
    ASSERT_TRUE(write_tensors(dir + "/" + file, part).ok());
  }
  std::ofstream(dir + "/model.safetensors.index.json") << "{\"metadata\":{\"total_size\":0},\"weight_map\":{" << weight_map << "}}";
}

// Every tensor of a, compared with b by name, dtype, shape and bytes.
inline ::testing::AssertionResult same_tensors(const std::string& a_path, const std::string& b_path) {
  auto a = Checkpoint::open(a_path);
  auto b = Checkpoint::open(b_path);
  if (!a.ok()) return ::testing::AssertionFailure() << a.status().to_string();
  if (!b.ok()) return ::testing::AssertionFailure() << b.status().to_string();
  if (a->tensors().size() != b->tensors().size()) {
    return ::testing::AssertionFailure() << a->tensors().size() << " vs " << b->tensors().size() << " tensors";
  }
  for (size_t i = 0; i < a->tensors().size(); ++i) {
    const auto& x = a->tensors()[i];
    const auto& y = b->tensors()[i];
    if (x.name != y.name || x.dtype != y.dtype || x.shape != y.shape) {
      return ::testing::AssertionFailure() << "tensor " << x.name << " vs " << y.name << " differ in name/dtype/shape";
    }
    auto xb = a->bytes(x);
    auto yb = b->bytes(y);
    if (xb.size() != yb.size() || (xb.size() && std::memcmp(xb.data(), yb.data(), xb.size()) != 0)) {
      return ::testing::AssertionFailure() << "tensor " << x.name << " bytes differ";
    }
  }
  return ::testing::AssertionSuccess();
}

inline const Encoding kPatchEncodings[] = {Encoding::kIndices, Encoding::kGaps, Encoding::kGapsZstd, Encoding::kXorZstd,
                                          Encoding::kNative, Encoding::kAuto};

// Decoded changes collected from a codec's sink (positions ascending, values packed).
struct Decoded {
  std::vector<uint64_t> positions;
  std::vector<std::byte> values;
  // A sink that appends every batch here.
  auto sink() {
    return [this](std::span<const uint64_t> p, std::span<const std::byte> v) {
      positions.insert(positions.end(), p.begin(), p.end());
      values.insert(values.end(), v.begin(), v.end());
      return Status::Ok();
    };
  }
};

// The payload views of an encoded tensor, as a decoder takes them.
inline std::vector<codec::PayloadView> views_of(const codec::EncodedTensor& e) {
  std::vector<codec::PayloadView> v;
  for (const auto& p : e.payloads) v.push_back({p.role, p.dtype, p.shape, p.bytes});
  return v;
}

}  // namespace dws::test

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace dws::test {

// Starts a process with stdout+stderr going to `log_path`; returns its pid (or -1).
inline pid_t spawn(const std::vector<std::string>& argv, const std::string& log_path) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  if (posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ) != 0) pid = -1;
  posix_spawn_file_actions_destroy(&actions);
  return pid;
}

struct RunResult {
  int exit_code = -1;  // -1 when killed by a signal
  std::string output;  // stdout and stderr together
};

inline RunResult run_cli(const std::vector<std::string>& args) {
  std::vector<std::string> argv{DWS_CLI_PATH};
  argv.insert(argv.end(), args.begin(), args.end());
  char log[] = "/tmp/dws-cli-XXXXXX";
  int fd = ::mkstemp(log);
  ::close(fd);
  RunResult r;
  pid_t pid = spawn(argv, log);
  int status = 0;
  if (pid > 0 && ::waitpid(pid, &status, 0) == pid && WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  std::ifstream in(log);
  r.output.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  ::unlink(log);
  return r;
}

// The real SeaweedFS server of the ctest fixture `s3` (tests/s3/weed_fixture.py): its env file sets the
// endpoint and credentials; each call opens a fresh random prefix of the test bucket. nullptr when the
// fixture did not run (outside ctest); callers skip then, or fail when DWS_REQUIRE_S3=1 (scripts/test.sh).
inline std::unique_ptr<Store> open_fixture_s3_store(const std::string& what, const StoreOptions& options = {}) {
  std::ifstream env(std::string(DWS_S3_FIXTURE_DIR) + "/env");
  std::string line, bucket;
  while (std::getline(env, line)) {
    const size_t eq = line.find('=');
    if (eq == std::string::npos) continue;
    if (line.substr(0, eq) == "DWS_S3_BUCKET") bucket = line.substr(eq + 1);
    ::setenv(line.substr(0, eq).c_str(), line.substr(eq + 1).c_str(), 1);
  }
  if (bucket.empty()) return nullptr;
  std::mt19937_64 rng(std::random_device{}());
  auto s = open_store("s3://" + bucket + "/" + what + "-" + std::to_string(rng()), options);
  return s.ok() ? std::move(s).value() : nullptr;
}

inline bool s3_required() {
  const char* v = std::getenv("DWS_REQUIRE_S3");
  return v && std::string(v) == "1";
}

}  // namespace dws::test
