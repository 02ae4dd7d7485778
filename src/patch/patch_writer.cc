// create_patch: diff, digest, encode (tensors in parallel), then one atomic safetensors write.
#include <algorithm>
#include <map>
#include <set>

#include "codec/codecs.h"
#include "codec/native.h"
#include "core/thread_pool.h"
#include "dws/patch.h"
#include "patch/patch_internal.h"

namespace dws {

Status write_patch_file(const std::string& patch_path, const PatchHeader& header, std::span<const TensorWrite> payloads) {
  std::string doc;
  try {
    doc = patch_json::to_json(header);
  } catch (const std::exception& e) {  // names that are not valid UTF-8 cannot go into JSON
    return make_error(ErrorCode::kInvalidArgument, std::string("cannot encode patch metadata: ") + e.what());
  }
  FileMetadata meta{{std::string(patch_json::kFormatKey), std::string(patch_json::kFormatName)},
                    {std::string(patch_json::kVersionKey), std::to_string(kPatchFormatVersion)},
                    {std::string(patch_json::kDocumentDigestKey),
                     digest_hex(digest_bytes(std::as_bytes(std::span(doc.data(), doc.size()))))},
                    {std::string(patch_json::kDocumentKey), doc}};
  // A payload name can collide with another payload only if tensor names contain ':'; the writer refuses
  // duplicates (E_DUPLICATE) rather than writing an ambiguous patch.
  Status st = write_safetensors(patch_path, payloads, meta);
  if (!st.ok()) return st.with_context("write '" + patch_path + "'");
  return Status::Ok();
}

Result<PatchStats> create_patch(const Checkpoint& base, const Checkpoint& target, const std::string& patch_path,
                                const CreatePatchOptions& options) {
  if (options.encoding == Encoding::kFull) {
    return make_error(ErrorCode::kInvalidArgument, "diff: 'full' is not a patch encoding (it is used per tensor for added or re-shaped tensors)");
  }
  const std::vector<TensorDiff> diffs = diff_checkpoints(base, target, options.threads);
  const std::vector<Digest128> base_digests = tensor_digests(base, options.base_digests, options.threads);
  auto base_digest_of = [&](const CheckpointTensor* t) { return base_digests[static_cast<size_t>(t - base.tensors().data())]; };
  // Target digests from the base's and the diff, in O(changes) per modified tensor; added and replaced
  // tensors are hashed whole.
  std::vector<Digest128> target_digests(target.tensors().size());
  {
    ThreadPool pool(options.threads);
    pool.parallel_for(diffs.size(), [&](size_t i) {
      const TensorDiff& d = diffs[i];
      if (!d.target) return;
      Digest128& out = target_digests[static_cast<size_t>(d.target - target.tensors().data())];
      const CheckpointTensor& t = *d.target;
      if (d.change == TensorChange::kUnchanged) {
        out = base_digest_of(d.base);
      } else if (d.change == TensorChange::kModified) {
        const TensorSeed seed = tensor_seed(t.name, t.dtype, t.shape);
        const size_t w = dtype_size_bytes(t.dtype);
        const std::byte* values = target.bytes(t).data();
        TensorDigestDelta delta(seed, base.bytes(*d.base), w);
        for (uint64_t p : d.positions) delta.set(p, values + p * w);
        out = digest_add(base_digest_of(d.base), delta.delta());
      } else {
        out = tensor_digest(t.name, t.dtype, t.shape, target.bytes(t));
      }
    });
  }
  auto target_digest_of = [&](const CheckpointTensor* t) { return target_digests[static_cast<size_t>(t - target.tensors().data())]; };

  PatchHeader header;
  header.encoding = options.encoding;
  header.base_state_digest = state_digest(base_digests);
  header.target_state_digest = state_digest(target_digests);
  header.target_layout = target.layout();

  PatchStats stats;
  std::vector<const TensorDiff*> carried;
  for (const TensorDiff& d : diffs) {
    ++stats.tensors;
    if (d.change == TensorChange::kRemoved) {
      header.removed.push_back({d.name, base_digest_of(d.base)});
      ++stats.removed_tensors;
    } else if (d.change != TensorChange::kUnchanged) {
      carried.push_back(&d);
    }
  }

  std::vector<Result<codec::EncodedTensor>> encoded(carried.size(), Status());
  ThreadPool pool(options.threads);
  pool.parallel_for(carried.size(), [&](size_t i) {
    const TensorDiff& d = *carried[i];
    const CheckpointTensor& t = *d.target;
    const Encoding enc = d.change == TensorChange::kModified ? options.encoding : Encoding::kFull;
    codec::EncodeInput in{t.dtype, d.base && d.change == TensorChange::kModified ? base.bytes(*d.base) : std::span<const std::byte>(),
                          target.bytes(t), d.positions};
    encoded[i] = codec::encode_tensor(enc, in, t.shape, {options.zstd_level, options.class_positions});
  });

  std::vector<TensorWrite> writes;
  for (size_t i = 0; i < carried.size(); ++i) {
    if (!encoded[i].ok()) return encoded[i].status().with_context("diff: tensor '" + carried[i]->name + "'");
    const TensorDiff& d = *carried[i];
    const codec::EncodedTensor& e = encoded[i].value();
    PatchTensor pt;
    pt.name = d.name;
    pt.change = d.change;
    pt.encoding = e.encoding;
    pt.dtype = d.target->dtype;
    pt.shape = d.target->shape;
    pt.changes = e.changes;
    pt.index_dtype = e.index_dtype;
    if (d.base) pt.base_digest = base_digest_of(d.base);
    pt.target_digest = target_digest_of(d.target);
    DigestStream hash;
    for (const codec::PayloadTensor& p : e.payloads) {
      hash.update(p.bytes);
      pt.payload_names.push_back(patch_json::payload_name(d.name, p.role));
      writes.push_back({{pt.payload_names.back(), p.dtype, p.shape}, p.bytes});
      stats.payload_bytes += p.bytes.size();
    }
    pt.payload_hash = hash.finish();
    stats.changes += pt.changes;
    ++stats.changed_tensors;
    header.tensors.push_back(std::move(pt));
  }
  for (const CheckpointTensor& t : target.tensors()) {
    stats.elements += t.numel();
    stats.target_bytes += t.size_bytes();
  }

  DWS_RETURN_IF_ERROR(write_patch_file(patch_path, header, writes).with_context("diff"));
  auto size = Patch::open(patch_path);
  if (!size.ok()) return size.status().with_context("diff: re-reading the written patch");
  stats.patch_file_bytes = size->file_size_bytes();
  return stats;
}

Result<PatchStats> create_patch_from_changes(const CheckpointLayout& layout, const TensorDigests& base_digests,
                                             std::span<const TrackedTensorChanges> changed, const std::string& patch_path,
                                             const CreatePatchOptions& options) {
  if (options.encoding != Encoding::kAuto && options.encoding != Encoding::kNative) {
    return make_error(ErrorCode::kUnsupported, "tracked patch: encoding '" + std::string(encoding_name(options.encoding)) +
                                                   "' needs whole tensors; tracked changes are encoded with native");
  }
  std::map<std::string_view, const TensorSpec*> specs;
  PatchStats stats;
  std::vector<Digest128> base_list, target_list;
  for (const auto& shard : layout.shards) {
    for (const TensorSpec& t : shard.tensors) {
      if (!specs.emplace(t.name, &t).second) return make_error(ErrorCode::kDuplicate, "tracked patch: layout lists '" + t.name + "' twice");
      auto d = base_digests.find(t.name);
      if (d == base_digests.end()) return make_error(ErrorCode::kInvalidArgument, "tracked patch: no base digest for tensor '" + t.name + "'");
      base_list.push_back(d->second);
      const std::optional<uint64_t> numel = checked_numel(t.shape);
      if (!numel) return make_error(ErrorCode::kShape, "tracked patch: tensor '" + t.name + "' has too many elements");
      ++stats.tensors;
      stats.elements += *numel;
      stats.target_bytes += *numel * dtype_size_bytes(t.dtype);
    }
  }
  TensorDigests target_digests(base_digests.begin(), base_digests.end());
  std::set<std::string_view> seen;
  for (const TrackedTensorChanges& c : changed) {
    auto spec = specs.find(c.name);
    if (spec == specs.end()) return make_error(ErrorCode::kInvalidArgument, "tracked patch: tensor '" + c.name + "' is not in the layout");
    if (!seen.insert(c.name).second) return make_error(ErrorCode::kDuplicate, "tracked patch: tensor '" + c.name + "' given twice");
    const TensorSpec& t = *spec->second;
    if (c.dtype != t.dtype || c.shape != t.shape) {
      return make_error(ErrorCode::kInvalidArgument, "tracked patch: tensor '" + c.name + "' is " + std::string(dtype_name(c.dtype)) + " " +
                                                         shape_string(c.shape) + ", the layout says " + std::string(dtype_name(t.dtype)) +
                                                         " " + shape_string(t.shape));
    }
    if (!(c.base_digest == base_digests.find(c.name)->second)) {
      return make_error(ErrorCode::kBaseMismatch, "tracked patch: tensor '" + c.name + "' was tracked from another base digest");
    }
    target_digests[c.name] = c.target_digest;
  }
  for (const auto& shard : layout.shards) {
    for (const TensorSpec& t : shard.tensors) target_list.push_back(target_digests.find(t.name)->second);
  }

  PatchHeader header;
  header.encoding = Encoding::kNative;
  header.base_state_digest = state_digest(base_list);
  header.target_state_digest = state_digest(target_list);
  header.target_layout = layout;

  std::vector<Result<std::vector<std::byte>>> encoded(changed.size(), Status());
  ThreadPool pool(options.threads);
  pool.parallel_for(changed.size(), [&](size_t i) {
    const TrackedTensorChanges& c = changed[i];
    const uint64_t numel = *checked_numel(c.shape);  // c.shape equals its layout entry's, checked above
    uint64_t prev = 0;
    for (size_t k = 0; k < c.positions.size(); ++k) {
      if (c.positions[k] >= numel || (k > 0 && c.positions[k] <= prev)) {
        encoded[i] = make_error(ErrorCode::kPositions, "tracked patch: tensor '" + c.name + "': position " + std::to_string(c.positions[k]) +
                                                            (c.positions[k] >= numel ? " out of range" : " not ascending"));
        return;
      }
      prev = c.positions[k];
    }
    encoded[i] = codec::native::encode_changes(c.dtype, numel, c.positions, c.base_values, c.target_values);
  });
  std::vector<size_t> order(changed.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return changed[a].name < changed[b].name; });
  std::vector<TensorWrite> writes;
  for (size_t i : order) {
    const TrackedTensorChanges& c = changed[i];
    if (!encoded[i].ok()) return encoded[i].status().with_context("tracked patch: tensor '" + c.name + "'");
    PatchTensor pt;
    pt.name = c.name;
    pt.change = TensorChange::kModified;
    pt.encoding = Encoding::kNative;
    pt.dtype = c.dtype;
    pt.shape = c.shape;
    pt.changes = c.positions.size();
    pt.base_digest = c.base_digest;
    pt.target_digest = c.target_digest;
    const std::vector<std::byte>& z = *encoded[i];
    pt.payload_hash = digest_bytes(z);
    pt.payload_names.push_back(patch_json::payload_name(c.name, "native"));
    writes.push_back({{pt.payload_names.back(), DType::kU8, {z.size()}}, z});
    stats.payload_bytes += z.size();
    stats.changes += pt.changes;
    ++stats.changed_tensors;
    header.tensors.push_back(std::move(pt));
  }
  DWS_RETURN_IF_ERROR(write_patch_file(patch_path, header, writes).with_context("tracked patch"));
  auto size = Patch::open(patch_path);
  if (!size.ok()) return size.status().with_context("tracked patch: re-reading the written patch");
  stats.patch_file_bytes = size->file_size_bytes();
  return stats;
}

}  // namespace dws
