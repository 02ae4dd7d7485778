// Apply: validate everything, then write. See dws/patch.h for the contract and apply/journal.h for the
// crash-safety protocol of the in-place path.
#include <algorithm>
#include <cstring>
#include <map>
#include <unordered_map>

#include "apply/in_memory.h"
#include "apply/journal.h"
#include "codec/codecs.h"
#include "dws/patch.h"
#include "patch/patch_internal.h"

namespace dws {

namespace {

Status base_mismatch(const std::string& msg) { return make_error(ErrorCode::kBaseMismatch, msg); }

template <size_t W>
void scatter_fixed(std::byte* dst, std::span<const uint64_t> positions, const std::byte* values) {
  for (uint64_t p : positions) {
    std::memcpy(dst + p * W, values, W);
    values += W;
  }
}

// Positions were validated against the tensor's element count by the decoder.
void scatter(std::span<std::byte> dst, size_t w, std::span<const uint64_t> positions, std::span<const std::byte> values) {
  switch (w) {
    case 1: scatter_fixed<1>(dst.data(), positions, values.data()); break;
    case 2: scatter_fixed<2>(dst.data(), positions, values.data()); break;
    case 4: scatter_fixed<4>(dst.data(), positions, values.data()); break;
    default: scatter_fixed<8>(dst.data(), positions, values.data()); break;
  }
}

codec::DecodeParams decode_params(const PatchTensor& t) {
  return {t.encoding, t.dtype, t.numel(), t.changes, t.index_dtype};
}

struct Prepared {
  CheckpointLayout layout;
  std::vector<Digest128> base_digests;  // aligned with base.tensors()
  TensorDigests target_digests;
};

// Checks the patch against the base and returns the fully specified target layout. Reads the whole base
// once, unless the caller supplies its tensor digests; writes nothing.
Result<Prepared> prepare(const Checkpoint& base, const Patch& patch, const ApplyOptions& options) {
  const PatchHeader& h = patch.header();
  DWS_RETURN_IF_ERROR(patch.verify_payload_hashes(options.threads));
  Prepared out;
  out.base_digests = tensor_digests(base, options.base_digests, options.threads);
  const std::vector<Digest128>& digests = out.base_digests;
  auto digest_of = [&](const CheckpointTensor* t) { return digests[static_cast<size_t>(t - base.tensors().data())]; };

  // Per-tensor checks first: they name the tensor that does not match.
  for (const PatchTensor& t : h.tensors) {
    const CheckpointTensor* b = base.find(t.name);
    if (t.change == TensorChange::kAdded) {
      if (b) return base_mismatch("tensor '" + t.name + "': the patch adds it, but the base already has it");
      continue;
    }
    if (!b) return base_mismatch("tensor '" + t.name + "': not in the base");
    if (t.change == TensorChange::kModified && (b->dtype != t.dtype || b->shape != t.shape)) {
      return base_mismatch("tensor '" + t.name + "': base is " + std::string(dtype_name(b->dtype)) + " " +
                           shape_string(b->shape) + ", patch expects " + std::string(dtype_name(t.dtype)) + " " +
                           shape_string(t.shape));
    }
    if (digest_of(b) != *t.base_digest) {
      return base_mismatch("tensor '" + t.name + "': base digest " + digest_hex(digest_of(b)) + " != expected " +
                           digest_hex(*t.base_digest));
    }
  }
  for (const PatchRemoved& r : h.removed) {
    const CheckpointTensor* b = base.find(r.name);
    if (!b) return base_mismatch("tensor '" + r.name + "': the patch removes it, but it is not in the base");
    if (digest_of(b) != r.base_digest) {
      return base_mismatch("tensor '" + r.name + "': base digest " + digest_hex(digest_of(b)) + " != expected " +
                           digest_hex(r.base_digest));
    }
  }
  const Digest128 base_state = state_digest(digests);
  if (base_state != h.base_state_digest) {
    return base_mismatch("base state digest " + digest_hex(base_state) + " != expected " + digest_hex(h.base_state_digest) +
                         " (a tensor the patch does not touch differs, or the base has extra tensors)");
  }

  // Complete the target layout from the base and check it accounts for every tensor.
  out.layout = h.target_layout;
  size_t carried_from_base = 0;
  for (auto& shard : out.layout.shards) {
    for (auto& spec : shard.tensors) {
      if (const PatchTensor* t = h.find(spec.name)) {
        out.target_digests[spec.name] = t->target_digest;
        continue;
      }
      const CheckpointTensor* b = base.find(spec.name);
      if (!b) {
        return make_error(ErrorCode::kPatchMetadata, "target layout names '" + spec.name + "', which is neither in the base nor in the patch");
      }
      spec.dtype = b->dtype;
      spec.shape = b->shape;
      out.target_digests[spec.name] = digest_of(b);
      ++carried_from_base;
    }
  }
  size_t expected_from_base = base.tensors().size() - h.removed.size();
  for (const PatchTensor& t : h.tensors) expected_from_base -= t.change == TensorChange::kAdded ? 0 : 1;
  if (carried_from_base != expected_from_base) {
    return make_error(ErrorCode::kPatchMetadata, "target layout keeps " + std::to_string(carried_from_base) +
                                                     " base tensors, the patch implies " + std::to_string(expected_from_base));
  }
  Digest128 target_state;
  for (const auto& [name, d] : out.target_digests) target_state = digest_add(target_state, d);
  if (target_state != h.target_state_digest) {
    return make_error(ErrorCode::kPatchMetadata, "patch is inconsistent: its tensors imply target state " +
                                                     digest_hex(target_state) + ", it records " + digest_hex(h.target_state_digest));
  }
  return out;
}

using in_memory::target_mismatch;

// Decodes a modified tensor's changes against `base` (which may alias the tensor being written: codecs.h
// allows it), hands them to `write`, and checks the result's digest in O(changes): the verified base
// digest plus the digest delta of the changes must equal the target digest.
template <typename WriteFn>
Status decode_checked(const Patch& patch, const PatchTensor& t, std::span<const std::byte> base, const Digest128& base_digest,
                      const std::string& what, ApplyStats& stats, WriteFn&& write) {
  const size_t w = dtype_size_bytes(t.dtype);
  const TensorSeed seed = tensor_seed(t.name, t.dtype, t.shape);
  TensorDigestDelta delta(seed, base, w);
  Status st = codec::decode_changes(decode_params(t), payload_views(patch, t), base,
                                    [&](std::span<const uint64_t> pos, std::span<const std::byte> vals) {
                                      for (size_t i = 0; i < pos.size(); ++i) delta.set(pos[i], vals.data() + i * w);
                                      stats.changes += pos.size();
                                      return write(pos, vals);
                                    });
  if (!st.ok()) return st.with_context(what + "tensor '" + t.name + "'");
  const Digest128 got = digest_add(base_digest, delta.delta());
  if (got != t.target_digest) return target_mismatch(what, t, got);
  ++stats.tensors_patched;
  return Status::Ok();
}

// Produces one target tensor: a copy of the base tensor with the patch's changes, or the patch's data.
Status fill_tensor(const Checkpoint& base, const Prepared& prep, const Patch& patch, const TensorSpec& spec,
                   std::span<std::byte> out, ApplyStats& stats) {
  const PatchTensor* t = patch.header().find(spec.name);
  const CheckpointTensor* b = base.find(spec.name);
  if (!t) {
    std::memcpy(out.data(), base.bytes(*b).data(), out.size());
    return Status::Ok();
  }
  if (t->encoding == Encoding::kFull) {
    std::memcpy(out.data(), patch.payload(*t, 0).data(), out.size());
    ++stats.tensors_written;
    const Digest128 got = tensor_digest(t->name, t->dtype, t->shape, out);
    return got == t->target_digest ? Status::Ok() : target_mismatch("", *t, got);
  }
  std::memcpy(out.data(), base.bytes(*b).data(), out.size());
  const size_t w = dtype_size_bytes(t->dtype);
  const Digest128 base_digest = prep.base_digests[static_cast<size_t>(b - base.tensors().data())];
  return decode_checked(patch, *t, out, base_digest, "", stats,
                        [&](std::span<const uint64_t> pos, std::span<const std::byte> vals) {
                          scatter(out, w, pos, vals);
                          return Status::Ok();
                        });
}

// For an in-place apply that keeps every file's layout: the new header bytes per shard (empty when the
// header stays as it is). nullopt when the layout changes and files must be rewritten.
std::optional<std::vector<std::string>> header_updates(const Checkpoint& ck, const CheckpointLayout& target,
                                                       const PatchHeader& h) {
  const CheckpointLayout& cur = ck.layout();
  if (!h.removed.empty() || cur.is_directory != target.is_directory || cur.has_index != target.has_index ||
      cur.shards.size() != target.shards.size()) {
    return std::nullopt;
  }
  for (const PatchTensor& t : h.tensors) {
    if (t.change != TensorChange::kModified) return std::nullopt;
  }
  // Both sides are canonical dumps (sorted keys), so string equality is JSON equality.
  if (cur.index_metadata_json != target.index_metadata_json) return std::nullopt;
  std::vector<std::string> updates(cur.shards.size());
  for (size_t s = 0; s < cur.shards.size(); ++s) {
    const auto& a = cur.shards[s];
    const auto& b = target.shards[s];
    if (cur.is_directory && a.file != b.file) return std::nullopt;
    if (a.tensors.size() != b.tensors.size()) return std::nullopt;
    for (size_t i = 0; i < a.tensors.size(); ++i) {
      if (a.tensors[i].name != b.tensors[i].name || a.tensors[i].dtype != b.tensors[i].dtype ||
          a.tensors[i].shape != b.tensors[i].shape) {
        return std::nullopt;
      }
    }
    if (a.metadata == b.metadata) continue;
    auto header = build_safetensors_header(b.tensors, b.metadata);
    const uint64_t old_size = ck.shard(s).header().header_size_bytes;
    if (!header.ok() || header->size() > old_size) return std::nullopt;
    header->append(old_size - header->size(), ' ');  // trailing spaces are valid JSON padding
    std::string bytes(8, '\0');
    for (int i = 0; i < 8; ++i) bytes[static_cast<size_t>(i)] = static_cast<char>((old_size >> (8 * i)) & 0xFF);
    updates[s] = bytes + *header;
  }
  return updates;
}

}  // namespace

Result<ApplyStats> apply_patch(const std::string& base_path, const Patch& patch, const std::string& out_path,
                               const ApplyOptions& options) {
  DWS_ASSIGN_OR_RETURN(Checkpoint base, Checkpoint::open(base_path));
  auto prep = prepare(base, patch, options);
  if (!prep.ok()) return prep.status().with_context("apply");
  ApplyStats stats;
  stats.tensors_removed = patch.header().removed.size();
  Status st = write_checkpoint(out_path, prep->layout,
                               [&](const TensorSpec& spec, std::span<std::byte> out) {
                                 return fill_tensor(base, *prep, patch, spec, out, stats);
                               },
                               options.overwrite);
  if (!st.ok()) return st.with_context("apply");
  stats.target_state_digest = digest_hex(patch.header().target_state_digest);
  stats.target_digests = std::move(prep->target_digests);
  return stats;
}

Result<ApplyStats> apply_patch_in_place(const std::string& checkpoint_path, const Patch& patch,
                                        const ApplyOptions& options) {
  Checkpoint::OpenOptions open_options;
  open_options.mode = SafetensorsFile::Mode::kReadWrite;
  DWS_ASSIGN_OR_RETURN(Checkpoint ck, Checkpoint::open(checkpoint_path, open_options));
  auto prep = prepare(ck, patch, options);
  if (!prep.ok()) return prep.status().with_context("apply --in-place");
  const PatchHeader& h = patch.header();
  ApplyStats stats;
  stats.target_state_digest = digest_hex(h.target_state_digest);
  stats.tensors_removed = h.removed.size();
  stats.target_digests = prep->target_digests;

  auto updates = header_updates(ck, prep->layout, h);
  if (!updates) {
    // The layout changes: write complete new files and swap them in atomically.
    stats.rewrote_files = true;
    Status st = write_checkpoint(checkpoint_path, prep->layout,
                                 [&](const TensorSpec& spec, std::span<std::byte> out) {
                                   return fill_tensor(ck, *prep, patch, spec, out, stats);
                                 },
                                 /*overwrite=*/true);
    if (!st.ok()) return st.with_context("apply --in-place");
    return stats;
  }

  std::vector<std::string> files;
  for (const auto& shard : ck.layout().shards) files.push_back(shard.file);
  DWS_ASSIGN_OR_RETURN(journal::Writer journal, journal::Writer::create(checkpoint_path, files));
  for (uint32_t s = 0; s < updates->size(); ++s) {
    if (!(*updates)[s].empty()) DWS_RETURN_IF_ERROR(journal.add_range(s, 0, std::as_bytes(std::span((*updates)[s]))));
  }
  // Decode every tensor into the journal, checking its result digest in O(changes), before any write.
  for (const PatchTensor& t : h.tensors) {
    const CheckpointTensor* b = ck.find(t.name);
    const uint64_t data_offset = ck.shard(b->shard).header().data_offset() + b->info->data_begin;
    const auto base_bytes = ck.bytes(*b);
    if (t.encoding == Encoding::kFull) {
      const Digest128 got = tensor_digest(t.name, t.dtype, t.shape, patch.payload(t, 0));
      if (got != t.target_digest) return target_mismatch("apply --in-place: ", t, got);
      DWS_RETURN_IF_ERROR(journal.add_range(b->shard, data_offset, patch.payload(t, 0)));
      ++stats.tensors_written;
      continue;
    }
    const uint32_t w = static_cast<uint32_t>(dtype_size_bytes(t.dtype));
    const Digest128 base_digest = prep->base_digests[static_cast<size_t>(b - ck.tensors().data())];
    DWS_RETURN_IF_ERROR(decode_checked(patch, t, base_bytes, base_digest, "apply --in-place: ", stats,
                                       [&](std::span<const uint64_t> pos, std::span<const std::byte> vals) {
                                         return journal.add_scatter(b->shard, data_offset, w, pos, vals);
                                       }));
  }
  ck = Checkpoint();  // release the mappings; replay maps the files itself
  DWS_RETURN_IF_ERROR(journal.commit());
  bool had_journal = false;
  auto replayed = journal::replay(checkpoint_path, &had_journal);
  if (!replayed.ok()) return replayed.status().with_context("apply --in-place: replaying the committed journal (run 'dws recover')");
  return stats;
}

Result<uint64_t> apply_patch_to_tensors(const Patch& patch, std::span<const TensorView> views, TensorDigests& digests) {
  const PatchHeader& h = patch.header();
  const std::string what = "apply to tensors: ";
  DWS_RETURN_IF_ERROR(in_memory::check_no_removals(h, what));
  std::unordered_map<std::string_view, const TensorView*> by_name;
  for (const TensorView& v : views) by_name.emplace(v.name, &v);
  // The changes of one tensor, decoded and checked, waiting to be written.
  struct Pending {
    const TensorView* view = nullptr;
    const PatchTensor* tensor = nullptr;
    std::vector<uint64_t> positions;
    std::vector<std::byte> values;
  };
  std::vector<Pending> pending;
  ApplyStats stats;
  for (const PatchTensor& t : h.tensors) {
    DWS_RETURN_IF_ERROR(in_memory::check_modified(t, what));
    auto it = by_name.find(t.name);
    if (it == by_name.end()) return make_error(ErrorCode::kInvalidArgument, what + "no tensor '" + t.name + "' was given");
    const TensorView& v = *it->second;
    const uint64_t want_bytes = t.numel() * dtype_size_bytes(t.dtype);
    if (v.dtype != t.dtype || v.shape != t.shape || v.data.size() != want_bytes) {
      return make_error(ErrorCode::kInvalidArgument, what + "tensor '" + t.name + "' is " + std::string(dtype_name(v.dtype)) + " " +
                                                         shape_string(v.shape) + " (" + std::to_string(v.data.size()) + " bytes); the patch expects " +
                                                         std::string(dtype_name(t.dtype)) + " " + shape_string(t.shape));
    }
    DWS_ASSIGN_OR_RETURN(const Digest128 base_digest, in_memory::check_base_digest(t, digests, what));
    Pending p{&v, &t, {}, {}};
    if (t.encoding == Encoding::kFull) {
      const Digest128 got = tensor_digest(t.name, t.dtype, t.shape, patch.payload(t, 0));
      if (got != t.target_digest) return target_mismatch(what, t, got);
    } else {
      DWS_RETURN_IF_ERROR(decode_checked(patch, t, v.data, base_digest, what, stats,
                                         [&](std::span<const uint64_t> pos, std::span<const std::byte> vals) {
                                           p.positions.insert(p.positions.end(), pos.begin(), pos.end());
                                           p.values.insert(p.values.end(), vals.begin(), vals.end());
                                           return Status::Ok();
                                         }));
    }
    pending.push_back(std::move(p));
  }
  // Everything checked: write.
  uint64_t written = 0;
  for (const Pending& p : pending) {
    if (p.tensor->encoding == Encoding::kFull) {
      const auto payload = patch.payload(*p.tensor, 0);
      std::memcpy(p.view->data.data(), payload.data(), payload.size());
      written += p.tensor->numel();
    } else {
      scatter(p.view->data, dtype_size_bytes(p.tensor->dtype), p.positions, p.values);
      written += p.positions.size();
    }
    digests[p.tensor->name] = p.tensor->target_digest;
  }
  return written;
}

Result<RecoverStats> recover_checkpoint(const std::string& checkpoint_path) {
  RecoverStats out;
  auto replayed = journal::replay(checkpoint_path, &out.had_journal);
  if (!replayed.ok()) return replayed.status().with_context("recover");
  out.records = replayed->records;
  out.changes = replayed->changes;
  return out;
}

namespace in_memory {

Status check_no_removals(const PatchHeader& header, const std::string& what) {
  if (header.removed.empty()) return Status::Ok();
  return make_error(ErrorCode::kUnsupported, what + "the patch removes tensor '" + header.removed.front().name +
                                                 "'; tensors in memory cannot change their set (reload the model)");
}

Status check_modified(const PatchTensor& t, const std::string& what) {
  if (t.change == TensorChange::kModified) return Status::Ok();
  return make_error(ErrorCode::kUnsupported, what + "the patch " + (t.change == TensorChange::kAdded ? "adds" : "re-creates") +
                                                 " tensor '" + t.name + "'; tensors in memory cannot change their set or shape");
}

Result<Digest128> check_base_digest(const PatchTensor& t, const TensorDigests& digests, const std::string& what) {
  auto known = digests.find(t.name);
  if (known == digests.end()) return make_error(ErrorCode::kInvalidArgument, what + "no digest was given for tensor '" + t.name + "'");
  if (!t.base_digest || known->second != *t.base_digest) {
    return base_mismatch(what + "tensor '" + t.name + "' has digest " + digest_hex(known->second) + "; the patch applies to " +
                         (t.base_digest ? digest_hex(*t.base_digest) : std::string("none")));
  }
  return known->second;
}

Status target_mismatch(const std::string& what, const PatchTensor& t, const Digest128& got) {
  return make_error(ErrorCode::kTargetMismatch, what + "tensor '" + t.name + "': result digest " + digest_hex(got) +
                                                    " != target " + digest_hex(t.target_digest));
}

}  // namespace in_memory

}  // namespace dws
