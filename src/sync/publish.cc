// publish and publish_prepared: committing a version to a Store with one writer (contracts in dws/sync.h;
// protocol in docs/store.md; several writers: writers.cc).
#include <filesystem>
#include <optional>

#include "core/file_io.h"
#include "dws/checkpoint.h"
#include "dws/digest.h"
#include "dws/notify.h"
#include "sync/keys.h"
#include "sync/sync_util.h"

namespace dws {

namespace {

namespace fs = std::filesystem;
using namespace sync_util;

// Uploads the checkpoint's files as the anchor of version m (under `prefix`), listing them in m.
Status upload_anchor(Store& store, const Checkpoint& cp, const std::string& prefix, VersionManifest& m,
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

}  // namespace

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
      auto pulled = pull_snapshot(store, options.snapshot_path, versions.back(), options.patch.threads, options.auth);
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
  auto pulled = pull_snapshot(store, options.snapshot_path, m.version, options.patch.threads, options.auth);
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

}  // namespace dws
