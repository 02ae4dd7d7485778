// publish, pull, verify over a Store (contracts in dws/sync.h; layout and protocol in docs/store.md).
#include <sys/stat.h>
#include <unistd.h>

#include <fcntl.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <filesystem>
#include <random>
#include <thread>

#include "core/file_io.h"
#include "core/sha256.h"
#include "dws/checkpoint.h"
#include "dws/digest.h"
#include "dws/notify.h"
#include "format/json_strict.h"
#include "sync/keys.h"
#include "sync/sync_util.h"

namespace dws {

namespace sync_util {

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

}  // namespace sync_util

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace sync_util;

constexpr uint64_t kMaxSidecarBytes = 256ull << 20;  // ~50 bytes per tensor digest

// The files that make up a checkpoint on disk: {name inside, local path}.
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

struct LocalState {
  uint64_t version = 0;
  std::string state_digest;
  // The tensor digests recorded with the version, present only when the checkpoint's files still carry
  // the stamps recorded with them and the digests add up to the state digest: then they describe the
  // bytes on disk without reading them.
  std::optional<TensorDigests> tensor_digests;
};

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

// Records the local checkpoint's version; with its tensor digests (verified by the apply that produced
// the files, or by a rescan) and the files' stamps, so that the next pull can trust them untouched.
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

// Moves a complete checkpoint at `from` (file or directory) to `to`, replacing what is there atomically.
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

// Makes `snapshot` a copy of the checkpoint just published as anchor-only version m, with a sidecar
// that lets the next pull trust it. Copies, then rescans the copy: a checkpoint rewritten during the
// publish does not match m.state_digest, and is left to the pull (which downloads the anchor).
void seed_snapshot(const Store& store, const Checkpoint& cp, const std::string& snapshot, const VersionManifest& m, size_t threads) {
  const std::string copy = scratch_path(snapshot, "seed");
  const auto copy_verified = [&]() -> std::optional<TensorDigests> {
    std::error_code ec;
    if (cp.is_directory()) fs::create_directories(copy, ec);
    for (const auto& [name, path] : checkpoint_files(cp)) {
      const std::string to = cp.is_directory() ? copy + "/" + name : copy;
      if (ec || !fs::copy_file(path, to, ec) || !io::fsync_file(to).ok()) return std::nullopt;
    }
    auto copied = Checkpoint::open(copy);
    if (!copied.ok()) return std::nullopt;
    const auto d = tensor_digests(*copied, threads);
    if (digest_hex(state_digest(d)) != m.state_digest) return std::nullopt;
    return tensor_digests_by_name(*copied, d);
  };
  std::optional<TensorDigests> digests = copy_verified();
  if (digests) {
    remove_quietly(sidecar_path(snapshot));
    if (replace_checkpoint(copy, snapshot).ok()) {
      (void)write_sidecar(snapshot, store, m.version, m.state_digest, &*digests);
      return;
    }
  }
  remove_quietly(copy);
}

class Puller {
 public:
  Puller(Store& store, const std::string& local, const PullOptions& options)
      : store_(store), local_(without_trailing_slashes(local)), options_(options) {}

  Result<PullResult> run() {
    if (io::path_exists(journal_path_for(local_))) {
      auto rec = recover_checkpoint(local_);
      if (!rec.ok()) return rec.status().with_context("pull: recovering " + local_);
    }
    DWS_ASSIGN_OR_RETURN(versions_, list_versions(store_));
    if (versions_.empty()) return make_error(ErrorCode::kNotFound, "pull: " + store_.describe() + " has no versions");
    const uint64_t target = options_.version.value_or(versions_.back());
    if (!std::binary_search(versions_.begin(), versions_.end(), target)) {
      return make_error(ErrorCode::kNotFound, "pull: version " + std::to_string(target) + " is not in " + store_.describe() +
                                                  " (latest " + std::to_string(versions_.back()) + ")");
    }
    // The target's manifest must be readable (and, with a key, signed) before anything else happens.
    DWS_RETURN_IF_ERROR(manifest(target).status().with_context("pull"));
    DWS_ASSIGN_OR_RETURN(std::optional<uint64_t> local_v, identify_local(target));
    result_.from_version = local_v;
    if (local_v && *local_v == target) return finish(target);
    // The cheaper of the delta chain from the local version and the nearest anchor plus its chain.
    DWS_ASSIGN_OR_RETURN(std::optional<uint64_t> anchor, nearest_anchor(target));
    std::optional<uint64_t> chain_bytes;
    if (local_v && *local_v < target) chain_bytes = chain_cost(*local_v, target);
    std::optional<uint64_t> anchor_bytes;
    if (anchor) {
      auto c = chain_cost(*anchor, target);
      if (c) anchor_bytes = manifests_.at(*anchor).bytes_of("anchor") + *c;
    }
    // A folded patch from the local version, then the chain from its end.
    std::optional<FoldManifest> fold;
    std::optional<uint64_t> fold_bytes;
    if (local_v && *local_v < target) {
      auto folds = list_folds(store_, options_.auth);
      if (folds.ok()) {
        for (auto& f : *folds) {
          if (f.from_version != *local_v || f.to_version > target) continue;
          auto rest = chain_cost(f.to_version, target);
          if (rest && (!fold_bytes || f.file.size_bytes + *rest < *fold_bytes)) {
            fold_bytes = f.file.size_bytes + *rest;
            fold = f;
          }
        }
      }
    }
    auto cheaper = [](std::optional<uint64_t> a, std::optional<uint64_t> b) { return a && (!b || *a <= *b); };
    Status chain_status = Status::Ok();
    if (fold && cheaper(fold_bytes, chain_bytes) && cheaper(fold_bytes, anchor_bytes)) {
      chain_status = apply_object(local_, fold->file, fold->base_state_digest, fold->state_digest,
                                  "fold " + std::to_string(fold->from_version) + "->" + std::to_string(fold->to_version), digests_);
      if (chain_status.ok()) {
        result_.used_fold = true;
        chain_status = write_sidecar(local_, store_, fold->to_version, fold->state_digest, digests_ ? &*digests_ : nullptr);
        if (options_.on_version) options_.on_version(fold->to_version, false);
      }
      if (chain_status.ok()) chain_status = apply_chain(local_, fold->to_version, target, /*update_sidecar=*/true, digests_);
      if (chain_status.ok()) return finish(target);
    } else if (cheaper(chain_bytes, anchor_bytes)) {
      chain_status = apply_chain(local_, *local_v, target, /*update_sidecar=*/true, digests_);
      if (chain_status.ok()) return finish(target);
      // Fall through to the anchor, which does not depend on the local state.
    }
    // A manifest on the way that could not be read (unsigned, store unavailable, ...) explains a missing
    // chain better than "not found".
    if (!manifest_failure_.ok() && (!anchor || !anchor_bytes) && chain_status.ok()) return manifest_failure_.with_context("pull");
    if (!anchor) {
      if (!chain_status.ok()) return chain_status;
      return make_error(ErrorCode::kNotFound, "pull: no anchor at or before version " + std::to_string(target) +
                                                  " and no delta chain from the local version");
    }
    if (!anchor_bytes) {
      return make_error(ErrorCode::kNotFound, "pull: the chain from anchor " + std::to_string(*anchor) + " to " +
                                                  std::to_string(target) + " is broken" +
                                                  (chain_status.ok() ? "" : "; the local chain failed: " + chain_status.to_string()));
    }
    Status st = restore_from_anchor(*anchor, target);
    if (!st.ok()) {
      return chain_status.ok() ? st : st.with_context("after the local chain failed (" + chain_status.to_string() + ")");
    }
    return finish(target);
  }

 private:
  Result<PullResult> finish(uint64_t target) {
    DWS_ASSIGN_OR_RETURN(const VersionManifest* m, manifest(target));
    result_.version = target;
    result_.state_digest = m->state_digest;
    if (digests_) result_.tensor_digests = std::move(*digests_);
    return result_;
  }

  Result<const VersionManifest*> manifest(uint64_t v) {
    auto it = manifests_.find(v);
    if (it == manifests_.end()) {
      auto m = read_manifest(store_, v, options_.auth);
      if (!m.ok()) {
        if (m.status().code() != ErrorCode::kNotFound && manifest_failure_.ok()) manifest_failure_ = m.status();
        return m.status();
      }
      it = manifests_.emplace(v, std::move(*m)).first;
    }
    return &it->second;
  }

  // The local version and its tensor digests: the sidecar's when its files are untouched since it was
  // written and its digest matches that version's manifest (O(tensors)); otherwise the version whose
  // state digest equals the checkpoint's, rescanned (O(model)); nullopt when there is no checkpoint or
  // it matches no version up to the target.
  Result<std::optional<uint64_t>> identify_local(uint64_t target) {
    if (!io::path_exists(local_)) return std::optional<uint64_t>();
    DWS_ASSIGN_OR_RETURN(std::optional<LocalState> side, read_sidecar(local_));
    if (side && side->tensor_digests && !options_.audit && std::binary_search(versions_.begin(), versions_.end(), side->version)) {
      auto m = manifest(side->version);
      if (m.ok() && (*m)->state_digest == side->state_digest) {
        digests_ = std::move(side->tensor_digests);
        return std::optional<uint64_t>(side->version);
      }
    }
    auto cp = Checkpoint::open(local_);
    if (!cp.ok()) return std::optional<uint64_t>();  // not a checkpoint: replaced from an anchor
    const std::vector<Digest128> digests = tensor_digests(*cp, options_.threads);
    const std::string digest = digest_hex(state_digest(digests));
    result_.rescanned = true;
    for (auto it = versions_.rbegin(); it != versions_.rend(); ++it) {
      if (*it > target) continue;
      auto m = manifest(*it);
      if (m.ok() && (*m)->state_digest == digest) {
        digests_ = tensor_digests_by_name(*cp, digests);
        DWS_RETURN_IF_ERROR(write_sidecar(local_, store_, *it, digest, &*digests_));
        return std::optional<uint64_t>(*it);
      }
    }
    return std::optional<uint64_t>();
  }

  Result<std::optional<uint64_t>> nearest_anchor(uint64_t target) {
    for (auto it = versions_.rbegin(); it != versions_.rend(); ++it) {
      if (*it > target) continue;
      auto m = manifest(*it);
      if (m.ok() && (*m)->has_anchor) return std::optional<uint64_t>(*it);
    }
    return std::optional<uint64_t>();
  }

  // Bytes of the deltas from+1..to, or nullopt when one is missing.
  std::optional<uint64_t> chain_cost(uint64_t from, uint64_t to) {
    uint64_t bytes = 0;
    for (uint64_t v = from + 1; v <= to; ++v) {
      if (!std::binary_search(versions_.begin(), versions_.end(), v)) return std::nullopt;
      auto m = manifest(v);
      if (!m.ok() || !(*m)->base_version) return std::nullopt;
      bytes += (*m)->bytes_of("delta");
    }
    return bytes;
  }

  // Downloads one patch object, checks it against the digests its manifest promises, and applies it
  // to the checkpoint at `path` in place (crash-safe). `digests`, when known, are the checkpoint's tensor
  // digests (verified): the apply then reads only what changes, and they move to the new version.
  Status apply_object(const std::string& path, const VersionFile& file, const std::string& base_digest,
                      const std::string& target_digest, const std::string& what, std::optional<TensorDigests>& digests) {
    const std::string tmp = scratch_path(local_, "patch");
    Status st = download_verified(store_, file, tmp, options_.auth);
    if (st.ok()) {
      auto patch = Patch::open(tmp);
      if (!patch.ok()) {
        st = patch.status();
      } else if (digest_hex(patch->header().target_state_digest) != target_digest ||
                 digest_hex(patch->header().base_state_digest) != base_digest) {
        st = make_error(ErrorCode::kPatchMetadata, "the patch's state digests disagree with its manifest");
      } else {
        ApplyOptions ao{options_.threads, false, digests ? &*digests : nullptr};
        auto applied = apply_patch_in_place(path, *patch, ao);
        if (applied.ok()) {
          digests = std::move(applied->target_digests);
          if (path == local_ && options_.on_patch) options_.on_patch(*patch);
        } else {
          digests.reset();  // whatever happened, they are no longer known to describe the files
          st = applied.status();
        }
      }
    }
    remove_quietly(tmp);
    if (!st.ok()) return st.with_context("pull: " + what);
    result_.bytes_downloaded += file.size_bytes;
    return Status::Ok();
  }

  // Applies deltas from+1..to to the checkpoint at `path` in place, one crash-safe apply each.
  Status apply_chain(const std::string& path, uint64_t from, uint64_t to, bool update_sidecar,
                     std::optional<TensorDigests>& digests) {
    for (uint64_t v = from + 1; v <= to; ++v) {
      DWS_ASSIGN_OR_RETURN(const VersionManifest* m, manifest(v));
      const VersionFile* delta = nullptr;
      for (const auto& f : m->files) {
        if (f.role == "delta") delta = &f;
      }
      if (!delta) return make_error(ErrorCode::kNotFound, "pull: version " + std::to_string(v) + " has no delta");
      DWS_RETURN_IF_ERROR(apply_object(path, *delta, m->base_state_digest, m->state_digest, "version " + std::to_string(v), digests));
      result_.applied.push_back(v);
      if (update_sidecar) DWS_RETURN_IF_ERROR(write_sidecar(path, store_, v, m->state_digest, digests ? &*digests : nullptr));
      if (options_.on_version) options_.on_version(v, false);
    }
    return Status::Ok();
  }

  Status restore_from_anchor(uint64_t anchor, uint64_t target) {
    DWS_ASSIGN_OR_RETURN(const VersionManifest* m, manifest(anchor));
    const std::string scratch = scratch_path(local_, "anchor");
    Status st = [&]() -> Status {
      if (m->sharded) {
        std::error_code ec;
        fs::create_directories(scratch, ec);
        if (ec) return make_error(ErrorCode::kIo, "pull: cannot create " + scratch + ": " + ec.message());
      }
      for (const auto& f : m->files) {
        if (f.role != "anchor") continue;
        DWS_RETURN_IF_ERROR(download_verified(store_, f, m->sharded ? scratch + "/" + f.name : scratch, options_.auth));
        result_.bytes_downloaded += f.size_bytes;
      }
      std::optional<TensorDigests> digests;
      {
        DWS_ASSIGN_OR_RETURN(Checkpoint cp, Checkpoint::open(scratch));
        const std::vector<Digest128> d = tensor_digests(cp, options_.threads);
        const std::string digest = digest_hex(state_digest(d));
        if (digest != m->state_digest) {
          return make_error(ErrorCode::kTargetMismatch, "pull: anchor of version " + std::to_string(anchor) +
                                                            " has state digest " + digest + ", its manifest says " + m->state_digest);
        }
        digests = tensor_digests_by_name(cp, d);
      }
      if (options_.on_version) options_.on_version(anchor, true);
      DWS_RETURN_IF_ERROR(apply_chain(scratch, anchor, target, /*update_sidecar=*/false, digests));
      DWS_RETURN_IF_ERROR(replace_checkpoint(scratch, local_));
      DWS_ASSIGN_OR_RETURN(const VersionManifest* tm, manifest(target));
      digests_ = std::move(digests);
      return write_sidecar(local_, store_, target, tm->state_digest, digests_ ? &*digests_ : nullptr);
    }();
    if (!st.ok()) {
      remove_quietly(scratch);
      remove_quietly(journal_path_for(scratch));
      return st;
    }
    result_.used_anchor = true;
    return Status::Ok();
  }

  Store& store_;
  std::string local_;
  const PullOptions& options_;
  std::vector<uint64_t> versions_;
  std::map<uint64_t, VersionManifest> manifests_;
  std::optional<TensorDigests> digests_;  // of local_, verified, when known
  Status manifest_failure_;               // the first manifest read that failed other than E_NOT_FOUND
  PullResult result_;
};

}  // namespace

Result<std::optional<uint64_t>> local_version(const std::string& local_path) {
  DWS_ASSIGN_OR_RETURN(std::optional<LocalState> s, read_sidecar(local_path));
  if (!s) return std::optional<uint64_t>();
  return std::optional<uint64_t>(s->version);
}

Result<PullResult> pull(Store& store, const std::string& local_path, const PullOptions& options) {
  return Puller(store, local_path, options).run();
}

Status follow(Store& store, const std::string& local_path, const FollowOptions& options) {
  std::optional<uint64_t> last;
  PullOptions po;
  po.threads = options.threads;
  po.audit = options.audit;
  po.auth = options.auth;
  while (!options.keep_going || options.keep_going()) {
    auto r = pull(store, local_path, po);
    po.audit = false;
    if (r.ok()) {
      if ((!last || *last != r->version) && options.on_pull) options.on_pull(*r);
      last = r->version;
    } else if (r.status().code() == ErrorCode::kUnavailable) {
      if (options.on_unavailable) options.on_unavailable(r.status());  // an outage: keep following
    } else if (!(r.status().code() == ErrorCode::kNotFound && !last)) {
      return r.status();  // an empty store is only "not yet"
    }
    if (options.keep_going && !options.keep_going()) break;
    if (options.listener) {
      options.listener->wait(options.poll_seconds);
    } else {
      std::this_thread::sleep_for(std::chrono::duration<double>(options.poll_seconds));
    }
  }
  return Status::Ok();
}

// Uploads the checkpoint's files as the anchor of version m (under `prefix`), listing them in m.
static Status upload_anchor(Store& store, const Checkpoint& cp, const std::string& prefix, VersionManifest& m,
                            std::vector<std::string>& uploaded, PublishResult& result, const AuthKey* auth) {
  m.has_anchor = true;
  m.sharded = cp.is_directory();
  for (const auto& [name, path] : checkpoint_files(cp)) {
    const std::string key = m.sharded ? prefix + "anchor/" + name : prefix + "anchor.safetensors";
    DWS_ASSIGN_OR_RETURN(VersionFile f, describe_file(path, key, "anchor", name, auth != nullptr));
    DWS_RETURN_IF_ERROR(store.put_file(key, path));
    uploaded.push_back(key);
    result.anchor_bytes += f.size_bytes;
    m.files.push_back(std::move(f));
  }
  result.has_anchor = true;
  return Status::Ok();
}

Result<PublishResult> publish(Store& store, const std::string& checkpoint_path, const PublishOptions& options) {
  if (options.writers > 1 || options.writer_index > 0) return publish_part(store, checkpoint_path, options);
  if (options.snapshot_path.empty()) return make_error(ErrorCode::kInvalidArgument, "publish: a snapshot path is required");
  DWS_ASSIGN_OR_RETURN(Checkpoint cp, Checkpoint::open(checkpoint_path));
  DWS_ASSIGN_OR_RETURN(std::vector<uint64_t> versions, list_versions(store));
  if (options.step && !versions.empty()) {
    DWS_ASSIGN_OR_RETURN(VersionManifest latest, read_manifest(store, versions.back(), options.auth));
    if (latest.step == options.step) return already_published(latest);
  }
  VersionManifest m;
  m.version = versions.empty() ? 0 : versions.back() + 1;
  m.created_unix_ms = now_unix_ms();
  m.step = options.step;
  m.elements = 0;
  for (const auto& t : cp.tensors()) m.elements += t.numel();
  m.model_bytes = cp.total_tensor_bytes();
  const std::string prefix = version_prefix(m.version) + random_token() + "/";
  const std::string scratch = scratch_path(options.snapshot_path, "publish");
  PublishResult result;
  result.version = m.version;
  result.elements = m.elements;

  std::vector<std::string> uploaded;
  auto cleanup = [&]() {
    for (const auto& k : uploaded) (void)store.remove(k);
    remove_quietly(scratch);
  };
  Status st = [&]() -> Status {
    bool want_anchor = versions.empty() || options.anchor ||
                       (options.anchor_every > 0 && m.version % options.anchor_every == 0);
    if (!versions.empty()) {
      DWS_ASSIGN_OR_RETURN(VersionManifest latest, read_manifest(store, versions.back(), options.auth));
      if (latest.writers > 1) {
        return make_error(ErrorCode::kInvalidArgument, "publish: version " + std::to_string(versions.back()) + " was published by " +
                                                           std::to_string(latest.writers) + " writers; publish with --writer I/" +
                                                           std::to_string(latest.writers));
      }
      // The snapshot must be at the latest version: pull brings it there (O(changes) when it already
      // is one version behind; rebuilt from an anchor when missing).
      PullOptions po;
      po.version = versions.back();
      po.threads = options.patch.threads;
      po.auth = options.auth;
      auto pulled = pull(store, options.snapshot_path, po);
      if (!pulled.ok()) return pulled.status().with_context("publish: bringing the snapshot " + options.snapshot_path + " to version " + std::to_string(versions.back()));
      DWS_ASSIGN_OR_RETURN(Checkpoint snap, Checkpoint::open(options.snapshot_path));
      CreatePatchOptions patch_options = options.patch;
      if (!pulled->tensor_digests.empty()) patch_options.base_digests = &pulled->tensor_digests;
      DWS_ASSIGN_OR_RETURN(PatchStats ps, create_patch(snap, cp, scratch, patch_options));
      const double density = ps.elements ? static_cast<double>(ps.changes) / static_cast<double>(ps.elements) : 0.0;
      const bool descends = ps.removed_tensors == 0 && density <= options.max_delta_density;
      if (descends) {
        DWS_ASSIGN_OR_RETURN(Patch patch, Patch::open(scratch));
        m.base_version = versions.back();
        m.base_state_digest = digest_hex(patch.header().base_state_digest);
        m.state_digest = digest_hex(patch.header().target_state_digest);
        m.changes = ps.changes;
        const std::string key = prefix + "delta.dwsp";
        DWS_ASSIGN_OR_RETURN(VersionFile f, describe_file(scratch, key, "delta", "", options.auth != nullptr));
        DWS_RETURN_IF_ERROR(store.put_file(key, scratch));
        uploaded.push_back(key);
        m.files.push_back(std::move(f));
        result.has_delta = true;
        result.delta_bytes = ps.patch_file_bytes;
        result.changes = ps.changes;
      } else if (!options.anchor) {
        return make_error(ErrorCode::kBaseMismatch,
                          "publish: " + checkpoint_path + " does not descend from version " + std::to_string(versions.back()) +
                              " (" + std::to_string(ps.changes) + " of " + std::to_string(ps.elements) +
                              " elements differ, " + std::to_string(ps.removed_tensors) +
                              " tensors removed); publish it with --anchor to start a new chain");
      } else {
        want_anchor = true;
      }
      remove_quietly(scratch);
    }
    if (want_anchor) {
      if (m.state_digest.empty()) {
        DWS_ASSIGN_OR_RETURN(m.state_digest, checkpoint_state_digest(cp, options.patch.threads));
      }
      DWS_RETURN_IF_ERROR(upload_anchor(store, cp, prefix, m, uploaded, result, options.auth));
    }
    // The commit point.
    const std::string text = serialize_manifest(m, options.auth);
    DWS_RETURN_IF_ERROR(store.put_if_absent(manifest_key(m.version),
                                            std::span(reinterpret_cast<const std::byte*>(text.data()), text.size())));
    return Status::Ok();
  }();
  if (!st.ok()) {
    cleanup();
    return st;
  }
  if (!options.notify_urls.empty()) {
    result.notify_failures = notify_receivers(options.notify_urls, m.version, options.notify_token, options.notify_timeout_seconds);
  }
  result.state_digest = m.state_digest;
  // Move the snapshot to the new version: a version without a delta is seeded from the checkpoint
  // itself, not downloaded again; otherwise the pull applies the delta just published.
  if (!m.base_version) seed_snapshot(store, cp, options.snapshot_path, m, options.patch.threads);
  PullOptions po;
  po.version = m.version;
  po.threads = options.patch.threads;
  po.auth = options.auth;
  auto pulled = pull(store, options.snapshot_path, po);
  if (!pulled.ok()) return pulled.status().with_context("publish: version " + std::to_string(m.version) + " committed, but updating the snapshot failed");
  return result;
}

Result<PublishResult> publish_prepared(Store& store, const PublishPreparedOptions& options) {
  if (options.patch_path.empty() && options.anchor_path.empty()) {
    return make_error(ErrorCode::kInvalidArgument, "publish: neither a patch nor an anchor to publish");
  }
  DWS_ASSIGN_OR_RETURN(std::vector<uint64_t> versions, list_versions(store));
  std::optional<VersionManifest> latest;
  if (!versions.empty()) {
    DWS_ASSIGN_OR_RETURN(latest, read_manifest(store, versions.back(), options.auth));
    if (options.step && latest->step == options.step) return already_published(*latest);
    if (latest->writers > 1) {
      return make_error(ErrorCode::kInvalidArgument, "publish: version " + std::to_string(versions.back()) + " was published by " +
                                                         std::to_string(latest->writers) + " writers; a prepared version has one");
    }
  }
  VersionManifest m;
  m.version = versions.empty() ? 0 : versions.back() + 1;
  m.created_unix_ms = now_unix_ms();
  m.step = options.step;
  PublishResult result;
  result.version = m.version;
  std::optional<Patch> patch;
  if (!options.patch_path.empty()) {
    if (!latest) return make_error(ErrorCode::kInvalidArgument, "publish: the store is empty; its first version must be an anchor, not a delta");
    DWS_ASSIGN_OR_RETURN(patch, Patch::open(options.patch_path));
    DWS_RETURN_IF_ERROR(patch->verify_payload_hashes(options.threads).with_context("publish: " + options.patch_path));
    const std::string base = digest_hex(patch->header().base_state_digest);
    if (base != latest->state_digest) {
      return make_error(ErrorCode::kBaseMismatch, "publish: " + options.patch_path + " starts at state " + base + ", but version " +
                                                      std::to_string(latest->version) + " is at " + latest->state_digest);
    }
    m.base_version = latest->version;
    m.base_state_digest = base;
    m.state_digest = digest_hex(patch->header().target_state_digest);
    for (const PatchTensor& t : patch->header().tensors) m.changes += t.changes;
    // Elements and bytes of the model, from the base's layout completed by the patch: the previous
    // version's figures (a tracked patch keeps every tensor's dtype and shape).
    m.elements = latest->elements;
    m.model_bytes = latest->model_bytes;
  }
  std::optional<Checkpoint> cp;
  if (!options.anchor_path.empty()) {
    DWS_ASSIGN_OR_RETURN(cp, Checkpoint::open(options.anchor_path));
    DWS_ASSIGN_OR_RETURN(std::string digest, checkpoint_state_digest(*cp, options.threads));
    if (patch && digest != m.state_digest) {
      return make_error(ErrorCode::kTargetMismatch, "publish: the anchor " + options.anchor_path + " is at state " + digest +
                                                  ", but the patch " + options.patch_path + " ends at " + m.state_digest +
                                                  " (the tracked changes do not explain the checkpoint)");
    }
    m.state_digest = digest;
    m.elements = 0;
    for (const auto& t : cp->tensors()) m.elements += t.numel();
    m.model_bytes = cp->total_tensor_bytes();
  }
  result.elements = m.elements;
  const std::string prefix = version_prefix(m.version) + random_token() + "/";
  std::vector<std::string> uploaded;
  Status st = [&]() -> Status {
    if (patch) {
      const std::string key = prefix + "delta.dwsp";
      DWS_ASSIGN_OR_RETURN(VersionFile f, describe_file(options.patch_path, key, "delta", "", options.auth != nullptr));
      DWS_RETURN_IF_ERROR(store.put_file(key, options.patch_path));
      uploaded.push_back(key);
      m.files.push_back(std::move(f));
      result.has_delta = true;
      result.delta_bytes = patch->file_size_bytes();
      result.changes = m.changes;
    }
    if (cp) DWS_RETURN_IF_ERROR(upload_anchor(store, *cp, prefix, m, uploaded, result, options.auth));
    const std::string text = serialize_manifest(m, options.auth);
    return store.put_if_absent(manifest_key(m.version), std::span(reinterpret_cast<const std::byte*>(text.data()), text.size()));
  }();
  if (!st.ok()) {
    for (const auto& k : uploaded) (void)store.remove(k);
    return st;
  }
  result.state_digest = m.state_digest;
  return result;
}

Result<VerifyReport> verify_store(Store& store, std::optional<uint64_t> version, bool full, size_t threads,
                                  const AuthKey* auth) {
  VerifyReport report;
  DWS_ASSIGN_OR_RETURN(std::vector<uint64_t> versions, list_versions(store));
  std::map<uint64_t, VersionManifest> manifests;
  for (uint64_t v : versions) {
    if (version && v != *version) continue;
    report.versions_checked.push_back(v);
    auto m = read_manifest(store, v, auth);
    if (!m.ok()) {
      report.problems.push_back("version " + std::to_string(v) + ": " + m.status().to_string());
      continue;
    }
    for (const auto& f : m->files) {
      auto got = describe_object(store, f.key, auth != nullptr);
      if (!got.ok()) {
        report.problems.push_back("version " + std::to_string(v) + ": " + f.key + ": " + got.status().to_string());
        continue;
      }
      if (got->size_bytes != f.size_bytes || got->xxh3 != f.xxh3) {
        report.problems.push_back("version " + std::to_string(v) + ": " + f.key + " is " + std::to_string(got->size_bytes) +
                                  " bytes hashing to " + got->xxh3 + "; the manifest says " + std::to_string(f.size_bytes) + ", " + f.xxh3);
      } else if (auth && got->sha256 != f.sha256) {
        report.problems.push_back("version " + std::to_string(v) + ": " + f.key + " has SHA-256 " + got->sha256 +
                                  "; the signed manifest says " + f.sha256);
      }
    }
    if (m->base_version) {
      auto prev = read_manifest(store, *m->base_version, auth);
      if (!prev.ok() && prev.status().code() == ErrorCode::kNotFound && m->has_anchor) {
        // The base was retired (gc); the version starts its chain from its own anchor.
      } else if (!prev.ok()) {
        report.problems.push_back("version " + std::to_string(v) + ": its base version " + std::to_string(*m->base_version) +
                                  " is missing (" + prev.status().to_string() + ")");
      } else if (prev->state_digest != m->base_state_digest) {
        report.problems.push_back("version " + std::to_string(v) + ": base state digest " + m->base_state_digest +
                                  " is not version " + std::to_string(*m->base_version) + "'s state " + prev->state_digest);
      }
    }
    manifests.emplace(v, std::move(*m));
  }
  if (full) {
    // Rebuild the checked versions in ascending order with pull, which checks every digest on the way,
    // and rescan each result; every anchor is also restored on its own (a pull with no local copy).
    const std::string scratch = (fs::temp_directory_path() / ("dws-verify-" + random_token())).string();
    std::error_code ec;
    fs::create_directories(scratch, ec);
    const std::string chained = scratch + "/chained";
    auto rebuild = [&](const std::string& local, uint64_t v, const VersionManifest& m) {
      PullOptions po;
      po.version = v;
      po.threads = threads;
      po.auth = auth;
      auto r = pull(store, local, po);
      if (!r.ok()) {
        report.problems.push_back("version " + std::to_string(v) + ": rebuilding it failed: " + r.status().to_string());
        remove_quietly(local);
        remove_quietly(sidecar_path(local));
        return;
      }
      auto cp = Checkpoint::open(local);
      auto d = cp.ok() ? checkpoint_state_digest(*cp, threads) : Result<std::string>(cp.status());
      if (!d.ok() || *d != m.state_digest) {
        report.problems.push_back("version " + std::to_string(v) + ": rebuilt state digest " + (d.ok() ? *d : d.status().to_string()) +
                                  " is not the manifest's " + m.state_digest);
      }
    };
    for (const auto& [v, m] : manifests) {
      rebuild(chained, v, m);
      if (m.has_anchor && v != manifests.begin()->first) {
        const std::string fresh = scratch + "/anchor";
        rebuild(fresh, v, m);
        remove_quietly(fresh);
        remove_quietly(sidecar_path(fresh));
      }
    }
    remove_quietly(scratch);
  }
  return report;
}

}  // namespace dws
