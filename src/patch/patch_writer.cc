// create_patch: diff, digest, encode (tensors in parallel), then one atomic safetensors write.
#include <algorithm>

#include "codec/codecs.h"
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

}  // namespace dws
