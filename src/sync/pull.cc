// pull and follow: bringing a local checkpoint to a version of a Store (contracts in dws/sync.h; protocol in
// docs/store.md).
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <map>
#include <thread>

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

}  // namespace dws
