// sync_util.h — helpers shared by publish (publish.cc, writers.cc), pull (pull.cc) and store maintenance
// (maintain.cc); defined in sync_util.cc (internal).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dws/checkpoint.h"
#include "dws/status.h"
#include "dws/store.h"
#include "dws/sync.h"

namespace dws::sync_util {

std::string random_token();                             // 16 hex digits, for unique object prefixes
uint64_t now_unix_ms();
// A version's file read from local disk: size, XXH3-128 and, with_sha256 (signed versions), SHA-256,
// in one pass; key, role and name as given.
Result<VersionFile> describe_file(const std::string& path, std::string key, std::string role, std::string name, bool with_sha256);
Result<std::string> checkpoint_state_digest(const Checkpoint& cp, size_t threads);
void remove_quietly(const std::string& path);           // file or tree; errors ignored
std::string sidecar_path(const std::string& local_path);
std::string without_trailing_slashes(std::string path);  // "dir/" -> "dir"; "/" stays
// A hidden scratch path next to `local` (same filesystem, so renames into place are atomic).
std::string scratch_path(const std::string& local, const std::string& what);
// The files that make up a checkpoint on disk: {name inside, local path}.
std::vector<std::pair<std::string, std::string>> checkpoint_files(const Checkpoint& cp);

// The local checkpoint's version as its sidecar (sidecar_path) records it.
struct LocalState {
  uint64_t version = 0;
  std::string state_digest;
  // The tensor digests recorded with the version, present only when the checkpoint's files still carry
  // the stamps recorded with them and the digests add up to the state digest: then they describe the
  // bytes on disk without reading them.
  std::optional<TensorDigests> tensor_digests;
};
// nullopt when there is no sidecar, or it cannot be read (the pull then identifies the state itself).
Result<std::optional<LocalState>> read_sidecar(const std::string& local_path);
// Records the local checkpoint's version; with its tensor digests (verified by the apply that produced
// the files, or by a rescan) and the files' stamps, so that the next pull can trust them untouched.
Status write_sidecar(const std::string& local_path, const Store& store, uint64_t version, const std::string& digest,
                     const TensorDigests* tensor_digests);
// Moves a complete checkpoint at `from` (file or directory) to `to`, replacing what is there atomically.
Status replace_checkpoint(const std::string& from, const std::string& to);

// Brings a publisher's snapshot at `snapshot_path` to `version` with pull (every digest checked; O(changes)
// from the version before, rebuilt from an anchor when missing). Callers add their context to an error.
Result<PullResult> pull_snapshot(Store& store, const std::string& snapshot_path, uint64_t version, size_t threads,
                                 const AuthKey* auth);

// Downloads a version's file and checks its size and XXH3 against the manifest (E_PAYLOAD_HASH), and
// with `auth` its SHA-256 (E_AUTH); the file is removed on failure.
Status download_verified(Store& store, const VersionFile& f, const std::string& path, const AuthKey* auth);
// publish() for one of several writers (writers.cc).
// The result of a publish whose step the store's latest version `m` already carries.
PublishResult already_published(const VersionManifest& m);
Result<PublishResult> publish_part(Store& store, const std::string& checkpoint_path, const PublishOptions& options);
// The size, XXH3-128 and (with_sha256) SHA-256 of a store object, read in bounded ranges (memory stays
// at one chunk).
Result<VersionFile> describe_object(Store& store, std::string_view key, bool with_sha256);

}  // namespace dws::sync_util
