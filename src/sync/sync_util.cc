// sync_util.cc — helpers shared by publish, pull and store maintenance (declared in sync/sync_util.h): tokens,
// file and object descriptions, verified downloads, and the local checkpoint's state (its sidecar, its files,
// replacing it atomically).
#include <sys/stat.h>
#include <unistd.h>

#include <fcntl.h>

#include <cstdio>
#include <filesystem>
#include <random>

#include "core/file_io.h"
#include "core/sha256.h"
#include "dws/checkpoint.h"
#include "dws/digest.h"
#include "format/json_strict.h"
#include "sync/keys.h"
#include "sync/sync_util.h"

namespace dws::sync_util {

std::string random_token() {
  std::random_device rd;
  const uint64_t v = (static_cast<uint64_t>(rd()) << 32) ^ rd() ^ static_cast<uint64_t>(::getpid());
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

uint64_t now_unix_ms() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count());
}

Result<VersionFile> describe_file(const std::string& path, std::string key, std::string role, std::string name, bool with_sha256) {
  DWS_ASSIGN_OR_RETURN(io::MappedFile f, io::MappedFile::open(path, io::MappedFile::Mode::kReadOnly));
  VersionFile out{std::move(key), std::move(role), std::move(name), f.bytes().size(), digest_hex(digest_bytes(f.bytes())), ""};
  if (with_sha256) out.sha256 = sha256_hex(f.bytes());
  return out;
}

Result<std::string> checkpoint_state_digest(const Checkpoint& cp, size_t threads) {
  return digest_hex(state_digest(tensor_digests(cp, threads)));
}

void remove_quietly(const std::string& path) {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
}

std::string without_trailing_slashes(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  return path;
}

std::string sidecar_path(const std::string& local_path) { return without_trailing_slashes(local_path) + ".dws-version"; }

Result<VersionFile> describe_object(Store& store, std::string_view key, bool with_sha256) {
  constexpr uint64_t kChunkBytes = 64ull << 20;
  DWS_ASSIGN_OR_RETURN(std::optional<ObjectInfo> info, store.stat(key));
  if (!info) return make_error(ErrorCode::kNotFound, "store: no object " + std::string(key) + " in " + store.describe());
  DigestStream hash;
  Sha256Stream sha;
  for (uint64_t at = 0; at < info->size_bytes; at += kChunkBytes) {
    DWS_ASSIGN_OR_RETURN(std::vector<std::byte> chunk, store.get_range(key, at, std::min(kChunkBytes, info->size_bytes - at)));
    hash.update(chunk);
    if (with_sha256) sha.update(chunk);
  }
  return VersionFile{std::string(key), "", "", info->size_bytes, digest_hex(hash.finish()), with_sha256 ? sha.finish_hex() : ""};
}

// A hidden scratch path next to `local` (same filesystem, so renames into place are atomic).
std::string scratch_path(const std::string& local, const std::string& what) {
  const std::string p = without_trailing_slashes(local);
  return io::parent_dir(p) + "/." + io::base_name(p) + ".dws-" + what + "-" + random_token();
}

Status download_verified(Store& store, const VersionFile& f, const std::string& path, const AuthKey* auth) {
  DWS_RETURN_IF_ERROR(store.get_file(f.key, path));
  auto got = describe_file(path, f.key, f.role, f.name, auth != nullptr);
  Status st;
  if (!got.ok()) {
    st = got.status();
  } else if (got->xxh3 != f.xxh3 || got->size_bytes != f.size_bytes) {
    st = make_error(ErrorCode::kPayloadHash, "store object " + f.key + " is " + std::to_string(got->size_bytes) + " bytes hashing to " +
                                                 got->xxh3 + "; its manifest says " + std::to_string(f.size_bytes) + " bytes, " + f.xxh3);
  } else if (auth && got->sha256 != f.sha256) {
    st = make_error(ErrorCode::kAuth, "store object " + f.key + " has SHA-256 " + got->sha256 + "; its signed manifest says " +
                                          (f.sha256.empty() ? "nothing" : f.sha256));
  }
  if (!st.ok()) remove_quietly(path);
  return st;
}

Result<PullResult> pull_snapshot(Store& store, const std::string& snapshot_path, uint64_t version, size_t threads,
                                 const AuthKey* auth) {
  PullOptions po;
  po.version = version;
  po.threads = threads;
  po.auth = auth;
  return pull(store, snapshot_path, po);
}

std::vector<std::pair<std::string, std::string>> checkpoint_files(const Checkpoint& cp) {
  std::vector<std::pair<std::string, std::string>> out;
  if (!cp.is_directory()) {
    out.push_back({"", cp.path()});
    return out;
  }
  for (const auto& shard : cp.layout().shards) out.push_back({shard.file, cp.path() + "/" + shard.file});
  if (cp.layout().has_index) out.push_back({std::string(kIndexFileName), cp.path() + "/" + std::string(kIndexFileName)});
  return out;
}

namespace {

using json = nlohmann::json;

constexpr uint64_t kMaxSidecarBytes = 256ull << 20;  // ~50 bytes per tensor digest

// What the sidecar records of each file of the checkpoint, to tell whether anything wrote to it since.
// ctime cannot be set back by a user (utimes moves it to now), so a later write changes the stamp.
json file_stamps(const std::string& local_path) {
  auto cp = Checkpoint::open(local_path);
  if (!cp.ok()) return json();
  json out = json::array();
  for (const auto& [name, path] : checkpoint_files(*cp)) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return json();
    out.push_back({{"file", name}, {"size", static_cast<uint64_t>(st.st_size)}, {"ino", static_cast<uint64_t>(st.st_ino)},
                   {"dev", static_cast<uint64_t>(st.st_dev)},
                   {"mtime_ns", static_cast<uint64_t>(st.st_mtim.tv_sec) * 1000000000ull + static_cast<uint64_t>(st.st_mtim.tv_nsec)},
                   {"ctime_ns", static_cast<uint64_t>(st.st_ctim.tv_sec) * 1000000000ull + static_cast<uint64_t>(st.st_ctim.tv_nsec)}});
  }
  return out;
}

}  // namespace

Result<std::optional<LocalState>> read_sidecar(const std::string& local_path) {
  const std::string path = sidecar_path(local_path);
  if (!io::path_exists(path)) return std::optional<LocalState>();
  DWS_ASSIGN_OR_RETURN(std::string text, io::read_file(path, kMaxSidecarBytes));
  auto doc = parse_json_strict(text, path);
  if (!doc.ok() || !doc->is_object() || !doc->contains("version") || !(*doc)["version"].is_number_unsigned() ||
      !doc->contains("state_digest") || !(*doc)["state_digest"].is_string()) {
    return std::optional<LocalState>();  // unreadable: treated as unknown, the pull identifies the state
  }
  LocalState state{(*doc)["version"].get<uint64_t>(), (*doc)["state_digest"].get<std::string>(), std::nullopt};
  const json* tensors = doc->contains("tensors") ? &(*doc)["tensors"] : nullptr;
  const json* stamps = doc->contains("files") ? &(*doc)["files"] : nullptr;
  if (tensors && tensors->is_object() && stamps && stamps->is_array() && *stamps == file_stamps(local_path)) {
    TensorDigests digests;
    Digest128 sum;
    bool ok = true;
    for (const auto& [name, hex] : tensors->items()) {
      auto d = hex.is_string() ? digest_from_hex(hex.get<std::string>()) : std::nullopt;
      if (!d) {
        ok = false;
        break;
      }
      digests.emplace(name, *d);
      sum = digest_add(sum, *d);
    }
    if (ok && digest_hex(sum) == state.state_digest) state.tensor_digests = std::move(digests);
  }
  return std::optional<LocalState>(std::move(state));
}

Status write_sidecar(const std::string& local_path, const Store& store, uint64_t version, const std::string& digest,
                     const TensorDigests* tensor_digests) {
  json doc = {{"format", "dws-local"}, {"format_version", 2}, {"store", store.describe()}, {"version", version}, {"state_digest", digest}};
  if (tensor_digests) {
    json tensors = json::object();
    for (const auto& [name, d] : *tensor_digests) tensors[name] = digest_hex(d);
    json stamps = file_stamps(local_path);
    if (!stamps.is_null()) {
      doc["tensors"] = std::move(tensors);
      doc["files"] = std::move(stamps);
    }
  }
  return io::write_file_atomic(sidecar_path(local_path), doc.dump() + "\n");
}

Status replace_checkpoint(const std::string& from, const std::string& to) {
  if (!io::is_directory(from) || !io::path_exists(to)) return io::rename_durable(from, to);
  if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_EXCHANGE) == 0) {
    DWS_RETURN_IF_ERROR(io::fsync_directory(io::parent_dir(to)));
    remove_quietly(from);  // now holds the old checkpoint
    return Status::Ok();
  }
  const std::string aside = io::temp_name_for(to);
  DWS_RETURN_IF_ERROR(io::rename_durable(to, aside));
  if (Status st = io::rename_durable(from, to); !st.ok()) {
    (void)io::rename_durable(aside, to);
    return st;
  }
  remove_quietly(aside);
  return Status::Ok();
}

}  // namespace dws::sync_util
