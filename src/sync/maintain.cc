// fold, gc and verify: store maintenance (contracts in dws/sync.h; protocol in docs/store.md).
#include <algorithm>
#include <filesystem>
#include <map>
#include <set>

#include "dws/sync.h"
#include "sync/keys.h"
#include "sync/sync_util.h"

namespace dws {

using namespace sync_util;

Result<FoldResult> fold(Store& store, uint64_t from_version, uint64_t to_version, const std::string& scratch_dir,
                        const CreatePatchOptions& options, const AuthKey* auth) {
  if (from_version >= to_version) {
    return make_error(ErrorCode::kInvalidArgument, "fold: --from " + std::to_string(from_version) + " must be below --to " +
                                                       std::to_string(to_version));
  }
  DWS_ASSIGN_OR_RETURN(VersionManifest from_m, read_manifest(store, from_version, auth));
  DWS_ASSIGN_OR_RETURN(VersionManifest to_m, read_manifest(store, to_version, auth));
  FoldResult result;
  result.from_version = from_version;
  result.to_version = to_version;
  for (uint64_t v = from_version + 1; v <= to_version; ++v) {
    auto m = read_manifest(store, v, auth);
    if (m.ok()) result.chain_bytes += m->bytes_of("delta");
  }
  // Materialize both versions with pull (every digest checked), then diff them: the fold holds exactly
  // the elements that differ between A and B, the last value winning.
  std::error_code ec;
  std::filesystem::create_directories(scratch_dir, ec);
  const std::string work = scratch_dir + "/dws-fold-" + random_token();
  std::filesystem::create_directories(work, ec);
  if (ec) return make_error(ErrorCode::kIo, "fold: cannot create " + work + ": " + ec.message());
  const std::string a = work + "/a", b = work + "/b", patch_path = work + "/fold.dwsp";
  std::string uploaded;
  Status st = [&]() -> Status {
    PullOptions po;
    po.threads = options.threads;
    po.version = from_version;
    po.auth = auth;
    DWS_RETURN_IF_ERROR(pull(store, a, po).status());
    po.version = to_version;
    DWS_RETURN_IF_ERROR(pull(store, b, po).status());
    DWS_ASSIGN_OR_RETURN(Checkpoint ca, Checkpoint::open(a));
    DWS_ASSIGN_OR_RETURN(Checkpoint cb, Checkpoint::open(b));
    DWS_ASSIGN_OR_RETURN(PatchStats ps, create_patch(ca, cb, patch_path, options));
    FoldManifest fm;
    fm.from_version = from_version;
    fm.to_version = to_version;
    fm.base_state_digest = from_m.state_digest;
    fm.state_digest = to_m.state_digest;
    fm.changes = ps.changes;
    DWS_ASSIGN_OR_RETURN(fm.file, describe_file(patch_path, fold_prefix(from_version, to_version) + random_token() + "/fold.dwsp",
                                                "fold", "", auth != nullptr));
    DWS_RETURN_IF_ERROR(store.put_file(fm.file.key, patch_path));
    uploaded = fm.file.key;
    const std::string text = serialize_fold_manifest(fm, auth);
    DWS_RETURN_IF_ERROR(store.put_if_absent(fold_manifest_key(from_version, to_version),
                                            std::span(reinterpret_cast<const std::byte*>(text.data()), text.size())));
    result.bytes = ps.patch_file_bytes;
    result.changes = ps.changes;
    return Status::Ok();
  }();
  if (!st.ok() && !uploaded.empty()) (void)store.remove(uploaded);
  remove_quietly(work);
  if (!st.ok()) return st.with_context("fold " + std::to_string(from_version) + "->" + std::to_string(to_version));
  return result;
}

Result<GcResult> gc(Store& store, const GcOptions& options) {
  if (options.keep_last == 0) return make_error(ErrorCode::kInvalidArgument, "gc: --keep-last must be at least 1");
  DWS_ASSIGN_OR_RETURN(std::vector<uint64_t> versions, list_versions(store));
  GcResult result;
  if (versions.empty()) return result;
  std::map<uint64_t, VersionManifest> manifests;
  for (uint64_t v : versions) {
    auto m = read_manifest(store, v);
    if (!m.ok()) return m.status().with_context("gc: refusing to delete anything while a manifest is unreadable");
    manifests.emplace(v, std::move(*m));
  }
  for (uint64_t p : options.pinned) {
    if (!manifests.count(p)) return make_error(ErrorCode::kNotFound, "gc: pinned version " + std::to_string(p) + " is not in the store");
  }
  // A version needs every version back to the newest anchor at or before it.
  std::set<uint64_t> keep;
  auto keep_with_chain = [&](uint64_t v) {
    for (auto it = manifests.find(v);; --it) {
      keep.insert(it->first);
      if (it->second.has_anchor || it == manifests.begin()) break;
    }
  };
  const size_t n = versions.size();
  for (size_t i = n - std::min<size_t>(n, options.keep_last); i < n; ++i) keep_with_chain(versions[i]);
  for (uint64_t p : options.pinned) keep_with_chain(p);
  DWS_ASSIGN_OR_RETURN(std::vector<ObjectInfo> objects, store.list("versions/"));
  auto remove = [&](const ObjectInfo& o) -> Status {
    ++result.deleted_objects;
    result.deleted_bytes += o.size_bytes;
    return options.dry_run ? Status::Ok() : store.remove(o.key);
  };
  // Retire versions: the manifest first (the version disappears atomically), then its files.
  for (uint64_t v : versions) {
    if (keep.count(v)) {
      result.kept_versions.push_back(v);
      continue;
    }
    result.deleted_versions.push_back(v);
    const std::string prefix = version_prefix(v);
    for (const auto& o : objects) {
      if (o.key == manifest_key(v)) DWS_RETURN_IF_ERROR(remove(o));
    }
    for (const auto& o : objects) {
      if (o.key.rfind(prefix, 0) == 0 && o.key != manifest_key(v)) DWS_RETURN_IF_ERROR(remove(o));
    }
  }
  // Orphans: files under a committed-or-older version number that its manifest does not list (left by
  // a publisher that died or lost the commit race). Files above the newest version may belong to a
  // publisher still at work and are left alone.
  for (const auto& o : objects) {
    if (o.key.size() < 30 || o.key.compare(0, 9, "versions/") != 0) continue;
    const std::string v_str = o.key.substr(9, 20);
    if (v_str.find_first_not_of("0123456789") != std::string::npos) continue;
    const uint64_t v = std::stoull(v_str);
    if (v > versions.back() || !keep.count(v) || o.key == manifest_key(v)) continue;
    const auto& files = manifests.at(v).files;
    if (std::none_of(files.begin(), files.end(), [&](const VersionFile& f) { return f.key == o.key; })) DWS_RETURN_IF_ERROR(remove(o));
  }
  // Folds whose versions are gone.
  DWS_ASSIGN_OR_RETURN(std::vector<FoldManifest> folds, list_folds(store, nullptr));  // gc keeps no secret: it only deletes
  for (const auto& f : folds) {
    if (keep.count(f.from_version) && keep.count(f.to_version)) continue;
    DWS_ASSIGN_OR_RETURN(std::vector<ObjectInfo> fold_objects, store.list(fold_prefix(f.from_version, f.to_version)));
    std::stable_partition(fold_objects.begin(), fold_objects.end(),
                          [&](const ObjectInfo& o) { return o.key == fold_manifest_key(f.from_version, f.to_version); });
    for (const auto& o : fold_objects) DWS_RETURN_IF_ERROR(remove(o));
  }
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
    const std::string scratch = (std::filesystem::temp_directory_path() / ("dws-verify-" + random_token())).string();
    std::error_code ec;
    std::filesystem::create_directories(scratch, ec);
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
