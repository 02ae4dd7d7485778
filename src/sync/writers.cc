// writers.cc — versions published by several writers (PublishOptions::writers; protocol in docs/store.md).
//
// Writer I of K publishing version N:
//   1. brings its snapshot (the whole model, a sharded directory) to the latest version and diffs its own
//      checkpoint against its shard, "part-<I>-of-<K>.safetensors";
//   2. uploads its part patch (and its shard as anchor part, on anchor versions) under a fresh token and
//      commits "versions/<N>/parts/<I>-of-<K>.json" with put_if_absent: files, hashes, and the name,
//      dtype, shape and base/target digests of every tensor it owns;
//   3. lists the parts; when all K are in, it merges them: one patch over the sharded model (payloads
//      copied, header rebuilt with the whole model's state digests computed from the parts' tensor
//      digests) and, on anchor versions, an index next to the K anchor shards; then it commits the version
//      manifest with put_if_absent. Several writers may merge at once; one commit wins (E_EXISTS for the
//      others, whose merged files are removed). A merger that dies is replaced by the next publish, which
//      finishes any complete, uncommitted version before it starts its own.
// Receivers see an ordinary version whose layout is the sharded directory.
#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include <sys/stat.h>

#include "core/file_io.h"
#include "core/sha256.h"
#include "dws/notify.h"
#include "patch/patch_internal.h"
#include "sync/keys.h"
#include "sync/sync_util.h"

namespace dws {

using namespace sync_util;
using json = nlohmann::json;

namespace {

struct PartTensor {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<uint64_t> shape;
  std::optional<Digest128> base;  // absent in a part without a base version
  Digest128 target;
};

struct Part {
  uint64_t version = 0;
  uint32_t writer = 0, writers = 0;
  std::optional<uint64_t> base_version;
  std::optional<uint64_t> step;
  std::optional<VersionFile> delta, anchor;
  uint64_t changes = 0, elements = 0, model_bytes = 0;
  std::vector<PartTensor> tensors;  // sorted by name
};

Status bad_part(const std::string& what, const std::string& msg) {
  return make_error(ErrorCode::kPatchMetadata, "part " + what + ": " + msg);
}

std::string serialize_part(const Part& p, const AuthKey* auth) {
  json doc = {{"format", "dws-part"}, {"version", p.version}, {"writer", p.writer}, {"writers", p.writers},
              {"changes", p.changes}, {"elements", p.elements}, {"model_bytes", p.model_bytes}};
  if (p.base_version) doc["base_version"] = *p.base_version;
  if (p.step) doc["step"] = *p.step;
  if (p.delta) doc["delta"] = file_entry_json(*p.delta);
  if (p.anchor) doc["anchor"] = file_entry_json(*p.anchor);
  json tensors = json::array();
  for (const PartTensor& t : p.tensors) {
    json e = {{"name", t.name}, {"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"target", digest_hex(t.target)}};
    if (t.base) e["base"] = digest_hex(*t.base);
    tensors.push_back(std::move(e));
  }
  doc["tensors"] = std::move(tensors);
  if (auth) sign_document(doc, *auth);
  return doc.dump() + "\n";
}

// Parses a part document from the store (hostile bytes: every field is checked).
Result<Part> parse_part(std::string_view text, const std::string& what, uint64_t version, const AuthKey* auth) {
  Part p;
  try {
    const json doc = json::parse(text);
    if (!doc.is_object()) return bad_part(what, "not a JSON object");
    DWS_RETURN_IF_ERROR(check_document(doc, auth, "part " + what));
    if (doc.at("format") != "dws-part") return bad_part(what, "not a dws-part document");
    p.version = doc.at("version").get<uint64_t>();
    p.writer = doc.at("writer").get<uint32_t>();
    p.writers = doc.at("writers").get<uint32_t>();
    p.changes = doc.at("changes").get<uint64_t>();
    p.elements = doc.at("elements").get<uint64_t>();
    p.model_bytes = doc.at("model_bytes").get<uint64_t>();
    if (doc.contains("base_version")) p.base_version = doc.at("base_version").get<uint64_t>();
    if (doc.contains("step")) p.step = doc.at("step").get<uint64_t>();
    for (const char* role : {"delta", "anchor"}) {
      if (!doc.contains(role)) continue;
      const json& f = doc.at(role);
      VersionFile vf{f.at("key").get<std::string>(), f.at("role").get<std::string>(), f.at("name").get<std::string>(), 0, "", ""};
      if (Status st = read_file_hashes(f, vf, auth); !st.ok()) return st.with_context("part " + what);
      if (Status st = check_store_key(vf.key); !st.ok()) return bad_part(what, st.message());
      if (vf.key.rfind(version_prefix(version), 0) != 0) return bad_part(what, "file " + vf.key + " lies outside its version");
      if (vf.role != role) return bad_part(what, "file role '" + vf.role + "' under '" + role + "'");
      (std::string_view(role) == "delta" ? p.delta : p.anchor) = std::move(vf);
    }
    for (const json& t : doc.at("tensors")) {
      PartTensor pt;
      pt.name = t.at("name").get<std::string>();
      const auto dt = dtype_from_name(t.at("dtype").get<std::string>());
      if (!dt) return bad_part(what, "tensor '" + pt.name + "' has an unknown dtype");
      pt.dtype = *dt;
      pt.shape = t.at("shape").get<std::vector<uint64_t>>();
      const auto target = digest_from_hex(t.at("target").get<std::string>());
      if (!target) return bad_part(what, "tensor '" + pt.name + "' has a bad target digest");
      pt.target = *target;
      if (t.contains("base")) {
        pt.base = digest_from_hex(t.at("base").get<std::string>());
        if (!pt.base) return bad_part(what, "tensor '" + pt.name + "' has a bad base digest");
      }
      if (!p.tensors.empty() && p.tensors.back().name >= pt.name) return bad_part(what, "tensors are not sorted by name");
      p.tensors.push_back(std::move(pt));
    }
  } catch (const std::exception& e) {
    return bad_part(what, std::string("malformed: ") + e.what());
  }
  if (p.version != version) return bad_part(what, "says version " + std::to_string(p.version));
  if (p.writers < 2 || p.writers > kMaxWriters || p.writer >= p.writers) {
    return bad_part(what, "writer " + std::to_string(p.writer) + " of " + std::to_string(p.writers));
  }
  if (p.base_version.has_value() != p.delta.has_value()) return bad_part(what, "a delta needs a base version and the reverse");
  if (!p.delta && !p.anchor) return bad_part(what, "neither a delta nor an anchor");
  return p;
}

// The committed parts of `version` (in writer order).
Result<std::vector<Part>> read_parts(Store& store, uint64_t version, const AuthKey* auth) {
  DWS_ASSIGN_OR_RETURN(std::vector<ObjectInfo> objects, store.list(parts_prefix(version)));
  std::vector<Part> parts;
  for (const ObjectInfo& o : objects) {
    if (o.size_bytes > kMaxManifestBytes) return bad_part(o.key, "larger than " + std::to_string(kMaxManifestBytes) + " bytes");
    DWS_ASSIGN_OR_RETURN(std::vector<std::byte> bytes, store.get(o.key, kMaxManifestBytes));
    DWS_ASSIGN_OR_RETURN(Part p, parse_part(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()), o.key, version, auth));
    if (o.key != part_key(version, p.writer, p.writers)) return bad_part(o.key, "its content names another writer");
    parts.push_back(std::move(p));
  }
  std::sort(parts.begin(), parts.end(), [](const Part& a, const Part& b) { return a.writer < b.writer; });
  return parts;
}

// Whether `parts` are all K parts of one version; an error when they disagree on K or the base.
Result<bool> parts_complete(const std::vector<Part>& parts) {
  if (parts.empty()) return false;
  const Part& first = parts.front();
  for (const Part& p : parts) {
    if (p.writers != first.writers) {
      return make_error(ErrorCode::kInvalidArgument, "version " + std::to_string(p.version) + ": writer " + std::to_string(p.writer) +
                                                         " says " + std::to_string(p.writers) + " writers, writer " +
                                                         std::to_string(first.writer) + " says " + std::to_string(first.writers));
    }
    if (p.base_version != first.base_version) {
      return make_error(ErrorCode::kBaseMismatch, "version " + std::to_string(p.version) + ": writers " + std::to_string(first.writer) +
                                                      " and " + std::to_string(p.writer) + " publish from different versions");
    }
  }
  return parts.size() == first.writers;
}

// Merges the K parts of a version and commits it. Ok when this call or another merger committed it.
Status merge_version(Store& store, const std::vector<Part>& parts, const std::string& scratch_dir, const AuthKey* auth) {
  const Part& first = parts.front();
  const uint64_t version = first.version;
  const uint32_t k = first.writers;
  VersionManifest m;
  m.version = version;
  m.writers = k;
  m.sharded = true;
  m.created_unix_ms = now_unix_ms();
  m.base_version = first.base_version;
  m.step = first.step;
  for (const Part& p : parts) {
    if (p.step != first.step) m.step.reset();  // refused at publish; a hand-made store could still disagree
  }
  std::vector<PartTensor> all;
  for (const Part& p : parts) {
    m.changes += p.changes;
    m.elements += p.elements;
    m.model_bytes += p.model_bytes;
    all.insert(all.end(), p.tensors.begin(), p.tensors.end());
  }
  std::sort(all.begin(), all.end(), [](const PartTensor& a, const PartTensor& b) { return a.name < b.name; });
  for (size_t i = 1; i < all.size(); ++i) {
    if (all[i].name == all[i - 1].name) {
      return make_error(ErrorCode::kDuplicate, "version " + std::to_string(version) + ": tensor '" + all[i].name + "' is published by two writers");
    }
  }
  auto digest_of = [&](bool base) -> Digest128 {
    std::vector<Digest128> digests;
    for (const PartTensor& t : all) {
      if (base && !t.base) continue;  // added in this version: not part of the base state
      digests.push_back(base ? *t.base : t.target);
    }
    return state_digest(digests);
  };
  const Digest128 target_digest = digest_of(false);
  m.state_digest = digest_hex(target_digest);

  const std::string prefix = version_prefix(version) + random_token() + "/";
  std::vector<std::string> uploaded, scratch_files;
  auto cleanup = [&] {
    for (const auto& key : uploaded) (void)store.remove(key);
    for (const auto& f : scratch_files) remove_quietly(f);
  };
  Status st = [&]() -> Status {
    if (first.base_version) {
      m.base_state_digest = digest_hex(digest_of(true));
      // One patch over the sharded model: the parts' payloads, under a header for the whole model.
      std::vector<Patch> patches;
      for (const Part& p : parts) {
        scratch_files.push_back(scratch_dir + "/.dws-merge-" + random_token() + ".dwsp");
        DWS_RETURN_IF_ERROR(download_verified(store, *p.delta, scratch_files.back(), auth));
        DWS_ASSIGN_OR_RETURN(Patch patch, Patch::open(scratch_files.back()));
        DWS_RETURN_IF_ERROR(patch.verify_payload_hashes(1));
        if (patch.header().target_layout.shards.size() != 1 || !patch.header().removed.empty()) {
          return make_error(ErrorCode::kPatchMetadata, "version " + std::to_string(version) + ": part of writer " +
                                                           std::to_string(p.writer) + " is not a single-file patch without removals");
        }
        patches.push_back(std::move(patch));
      }
      PatchHeader header;
      header.encoding = patches.front().header().encoding;
      header.base_state_digest = digest_from_hex(m.base_state_digest).value();
      header.target_state_digest = target_digest;
      header.target_layout.is_directory = true;
      header.target_layout.has_index = true;
      std::vector<TensorWrite> writes;
      for (size_t i = 0; i < parts.size(); ++i) {
        const Patch& patch = patches[i];
        CheckpointLayout::Shard shard = patch.header().target_layout.shards.front();
        shard.file = writer_shard_name(parts[i].writer, k);
        header.target_layout.shards.push_back(std::move(shard));
        for (const PatchTensor& t : patch.header().tensors) {
          PatchTensor copy = t;
          copy.payloads.clear();
          header.tensors.push_back(std::move(copy));
          for (size_t j = 0; j < t.payloads.size(); ++j) {
            writes.push_back({{t.payload_names[j], t.payloads[j]->dtype, t.payloads[j]->shape}, patch.payload(t, j)});
          }
        }
      }
      std::sort(header.tensors.begin(), header.tensors.end(), [](const PatchTensor& a, const PatchTensor& b) { return a.name < b.name; });
      scratch_files.push_back(scratch_dir + "/.dws-merge-" + random_token() + ".dwsp");
      const std::string merged = scratch_files.back();
      DWS_RETURN_IF_ERROR(write_patch_file(merged, header, writes));
      DWS_ASSIGN_OR_RETURN(Patch check, Patch::open(merged));  // the merged file must parse as any patch does
      const std::string key = prefix + "delta.dwsp";
      DWS_ASSIGN_OR_RETURN(VersionFile f, describe_file(merged, key, "delta", "", auth != nullptr));
      DWS_RETURN_IF_ERROR(store.put_file(key, merged));
      uploaded.push_back(key);
      m.files.push_back(std::move(f));
    }
    // An anchor when every writer sent its shard: the K shards plus an index naming them.
    if (std::all_of(parts.begin(), parts.end(), [](const Part& p) { return p.anchor.has_value(); })) {
      json weight_map = json::object();
      for (const Part& p : parts) {
        for (const PartTensor& t : p.tensors) weight_map[t.name] = writer_shard_name(p.writer, k);
        VersionFile f = *p.anchor;
        f.name = writer_shard_name(p.writer, k);
        m.files.push_back(std::move(f));
      }
      const std::string index = json({{"metadata", json::object()}, {"weight_map", weight_map}}).dump(1) + "\n";
      const std::string key = prefix + "anchor/" + std::string(kIndexFileName);
      const auto bytes = std::as_bytes(std::span(index.data(), index.size()));
      DWS_RETURN_IF_ERROR(store.put(key, bytes));
      uploaded.push_back(key);
      m.files.push_back({key, "anchor", std::string(kIndexFileName), index.size(), digest_hex(digest_bytes(bytes)),
                         auth ? sha256_hex(bytes) : ""});
      m.has_anchor = true;
    }
    if (!m.has_anchor && !m.base_version) {
      return make_error(ErrorCode::kInvalidArgument, "version " + std::to_string(version) + " has no base, so every writer must send an anchor");
    }
    const std::string text = serialize_manifest(m, auth);
    return store.put_if_absent(manifest_key(version), std::as_bytes(std::span(text.data(), text.size())));
  }();
  if (st.ok()) uploaded.clear();  // committed: the files belong to the version
  cleanup();
  if (!st.ok()) {
    if (st.code() == ErrorCode::kExists) return Status::Ok();  // another merger committed the version
    return st.with_context("merging version " + std::to_string(version));
  }
  return Status::Ok();
}

}  // namespace

namespace sync_util {

PublishResult already_published(const VersionManifest& m) {
  PublishResult r;
  r.version = m.version;
  r.already_published = true;
  r.elements = m.elements;
  r.state_digest = m.state_digest;
  return r;
}

Result<PublishResult> publish_part(Store& store, const std::string& checkpoint_path, const PublishOptions& options) {
  const uint32_t k = options.writers, me = options.writer_index;
  if (k < 2 || k > kMaxWriters || me >= k) {
    return make_error(ErrorCode::kInvalidArgument, "publish: writer " + std::to_string(me) + " of " + std::to_string(k) +
                                                       " (the index counts from 0, and 2.." + std::to_string(kMaxWriters) + " writers)");
  }
  if (options.snapshot_path.empty()) return make_error(ErrorCode::kInvalidArgument, "publish: a snapshot path is required");
  DWS_ASSIGN_OR_RETURN(Checkpoint cp, Checkpoint::open(checkpoint_path));
  if (cp.is_directory()) {
    return make_error(ErrorCode::kInvalidArgument, "publish: writer " + std::to_string(me) + " publishes one safetensors file, not the directory " + checkpoint_path);
  }
  const std::string scratch_dir = io::parent_dir(without_trailing_slashes(options.snapshot_path));
  // Finish versions whose parts are all in but whose merger died; then ours is the next one.
  uint64_t version = 0;
  std::vector<uint64_t> versions;
  for (;;) {
    DWS_ASSIGN_OR_RETURN(versions, list_versions(store));
    version = versions.empty() ? 0 : versions.back() + 1;
    if (options.step && !versions.empty()) {
      DWS_ASSIGN_OR_RETURN(VersionManifest latest, read_manifest(store, versions.back(), options.auth));
      if (latest.step == options.step) return already_published(latest);
    }
    DWS_ASSIGN_OR_RETURN(std::vector<Part> parts, read_parts(store, version, options.auth));
    DWS_ASSIGN_OR_RETURN(bool complete, parts_complete(parts));
    if (complete) {
      DWS_RETURN_IF_ERROR(merge_version(store, parts, scratch_dir, options.auth));
      continue;
    }
    for (const Part& p : parts) {
      if (p.writers != k) {
        return make_error(ErrorCode::kInvalidArgument, "publish: version " + std::to_string(version) + " is being published by " +
                                                           std::to_string(p.writers) + " writers, not " + std::to_string(k));
      }
      // Another writer's part at another step is a real disagreement; our own part at an earlier step
      // only means we are a version ahead of the others (lockstep: E_EXISTS below).
      if (p.writer != me && options.step && p.step && *p.step != *options.step) {
        return make_error(ErrorCode::kInvalidArgument, "publish: version " + std::to_string(version) + " is being published for step " +
                                                           std::to_string(*p.step) + " (writer " + std::to_string(p.writer) +
                                                           "); this writer is at step " + std::to_string(*options.step));
      }
      if (p.writer == me && options.step && p.step == options.step) {
        PublishResult r;
        r.version = version;
        r.committed = false;
        r.already_published = true;
        return r;
      }
      if (p.writer == me) {
        std::string missing;
        std::set<uint32_t> in;
        for (const Part& q : parts) in.insert(q.writer);
        for (uint32_t w = 0; w < k; ++w) {
          if (!in.count(w)) missing += (missing.empty() ? "" : ", ") + std::to_string(w);
        }
        return make_error(ErrorCode::kExists, "publish: writer " + std::to_string(me) + " already sent its part of version " +
                                                  std::to_string(version) + ", which waits for writers " + missing);
      }
    }
    break;
  }
  Part part;
  part.version = version;
  part.writer = me;
  part.writers = k;
  part.step = options.step;
  for (const auto& t : cp.tensors()) part.elements += t.numel();
  part.model_bytes = cp.total_tensor_bytes();
  const std::string prefix = version_prefix(version) + random_token() + "/";
  const std::string shard_name = writer_shard_name(me, k);
  const std::string scratch = scratch_path(options.snapshot_path, "part");
  std::vector<std::string> uploaded;
  PublishResult result;
  result.version = version;
  result.elements = part.elements;
  Status st = [&]() -> Status {
    for (const CheckpointTensor& t : cp.tensors()) part.tensors.push_back({t.name, t.dtype, t.shape, std::nullopt, {}});
    if (versions.empty()) {
      const std::vector<Digest128> target_digests = tensor_digests(cp, options.patch.threads);
      for (size_t i = 0; i < cp.tensors().size(); ++i) part.tensors[i].target = target_digests[i];
    } else {
      DWS_ASSIGN_OR_RETURN(VersionManifest latest, read_manifest(store, versions.back(), options.auth));
      if (latest.writers != k) {
        return make_error(ErrorCode::kInvalidArgument, "publish: version " + std::to_string(versions.back()) + " was published by " +
                                                           std::to_string(latest.writers) + " writer(s), not " + std::to_string(k));
      }
      auto pulled = pull_snapshot(store, options.snapshot_path, versions.back(), options.patch.threads, options.auth);
      if (!pulled.ok()) return pulled.status().with_context("publish: bringing the snapshot " + options.snapshot_path + " to version " + std::to_string(versions.back()));
      DWS_ASSIGN_OR_RETURN(Checkpoint snap, Checkpoint::open(options.snapshot_path + "/" + shard_name));
      CreatePatchOptions patch_options = options.patch;
      if (!pulled->tensor_digests.empty()) patch_options.base_digests = &pulled->tensor_digests;
      DWS_ASSIGN_OR_RETURN(PatchStats ps, create_patch(snap, cp, scratch, patch_options));
      const double density = ps.elements ? static_cast<double>(ps.changes) / static_cast<double>(ps.elements) : 0.0;
      if (ps.removed_tensors != 0 || density > options.max_delta_density) {
        return make_error(ErrorCode::kBaseMismatch, "publish: " + checkpoint_path + " does not descend from writer " + std::to_string(me) +
                                                        "'s shard of version " + std::to_string(versions.back()) + " (" +
                                                        std::to_string(ps.changes) + " of " + std::to_string(ps.elements) + " elements differ, " +
                                                        std::to_string(ps.removed_tensors) + " tensors removed)");
      }
      // Base and target digests of the shard's tensors, from the patch: it names every tensor it
      // touches; the others are unchanged, with the digests the snapshot's pull verified.
      DWS_ASSIGN_OR_RETURN(Patch patch, Patch::open(scratch));
      const std::vector<Digest128> snap_digests =
          pulled->tensor_digests.empty() ? tensor_digests(snap, options.patch.threads) : std::vector<Digest128>();
      for (size_t i = 0; i < snap.tensors().size(); ++i) {
        const CheckpointTensor& t = snap.tensors()[i];
        auto it = std::lower_bound(part.tensors.begin(), part.tensors.end(), t.name,
                                   [](const PartTensor& a, const std::string& n) { return a.name < n; });
        if (it == part.tensors.end() || it->name != t.name) continue;
        it->base = snap_digests.empty() ? pulled->tensor_digests.at(t.name) : snap_digests[i];
        const PatchTensor* pt = patch.header().find(t.name);
        it->target = pt ? pt->target_digest : *it->base;
      }
      for (PartTensor& t : part.tensors) {
        if (const PatchTensor* pt = patch.header().find(t.name); pt && !t.base) t.target = pt->target_digest;  // added
      }
      part.base_version = versions.back();
      part.changes = ps.changes;
      const std::string key = prefix + "part.dwsp";
      DWS_ASSIGN_OR_RETURN(part.delta, describe_file(scratch, key, "delta", "", options.auth != nullptr));
      DWS_RETURN_IF_ERROR(store.put_file(key, scratch));
      uploaded.push_back(key);
      result.has_delta = true;
      result.delta_bytes = ps.patch_file_bytes;
      result.changes = ps.changes;
      remove_quietly(scratch);
    }
    if (versions.empty() || options.anchor || (options.anchor_every > 0 && version % options.anchor_every == 0)) {
      const std::string key = prefix + "anchor/" + shard_name;
      DWS_ASSIGN_OR_RETURN(part.anchor, describe_file(cp.path(), key, "anchor", shard_name, options.auth != nullptr));
      DWS_RETURN_IF_ERROR(store.put_file(key, cp.path()));
      uploaded.push_back(key);
      result.has_anchor = true;
      result.anchor_bytes = part.anchor->size_bytes;
    }
    const std::string text = serialize_part(part, options.auth);
    DWS_RETURN_IF_ERROR(store.put_if_absent(part_key(version, me, k), std::as_bytes(std::span(text.data(), text.size()))));
    uploaded.clear();  // committed: the part's files now belong to the version
    DWS_ASSIGN_OR_RETURN(std::vector<Part> parts, read_parts(store, version, options.auth));
    DWS_ASSIGN_OR_RETURN(bool complete, parts_complete(parts));
    if (complete) DWS_RETURN_IF_ERROR(merge_version(store, parts, scratch_dir, options.auth));
    return Status::Ok();
  }();
  if (!st.ok()) {
    for (const auto& key : uploaded) (void)store.remove(key);
    remove_quietly(scratch);
    return st;
  }
  DWS_ASSIGN_OR_RETURN(std::vector<uint64_t> now, list_versions(store));
  result.committed = !now.empty() && now.back() >= version;
  if (result.committed) {
    DWS_ASSIGN_OR_RETURN(VersionManifest m, read_manifest(store, version, options.auth));
    result.state_digest = m.state_digest;
    if (!options.notify_urls.empty()) {
      result.notify_failures = notify_receivers(options.notify_urls, version, options.notify_token, options.notify_timeout_seconds);
    }
  }
  return result;
}

}  // namespace sync_util

}  // namespace dws
