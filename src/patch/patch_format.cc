#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "codec/codecs.h"
#include "core/file_io.h"
#include "core/thread_pool.h"
#include "format/json_strict.h"
#include "dws/patch.h"
#include "patch/patch_internal.h"

namespace dws {

using json = nlohmann::json;

uint64_t PatchTensor::numel() const { return *checked_numel(shape); }

uint64_t PatchTensor::payload_bytes() const {
  uint64_t total = 0;
  for (const TensorInfo* p : payloads) total += p->size_bytes();
  return total;
}

const PatchTensor* PatchHeader::find(std::string_view name) const {
  auto it = std::lower_bound(tensors.begin(), tensors.end(), name,
                             [](const PatchTensor& t, std::string_view n) { return t.name < n; });
  return it != tensors.end() && it->name == name ? &*it : nullptr;
}

namespace patch_json {

std::string payload_name(std::string_view tensor, std::string_view role) {
  std::string out(tensor);
  out += ':';
  out += role;
  return out;
}

namespace {

json string_map(const FileMetadata& m) {
  json o = json::object();
  for (const auto& [k, v] : m) o[k] = v;
  return o;
}

Status meta_error(const std::string& msg) { return make_error(ErrorCode::kPatchMetadata, "patch metadata: " + msg); }

// Small typed accessors that turn schema violations into E_PATCH_METADATA.
struct Reader {
  const json& obj;
  std::string ctx;
  Result<const json*> field(const char* key) const {
    auto it = obj.find(key);
    if (it == obj.end()) return meta_error(ctx + ": missing \"" + key + "\"");
    return &*it;
  }
  Result<std::string> str(const char* key) const {
    DWS_ASSIGN_OR_RETURN(const json* v, field(key));
    if (!v->is_string()) return meta_error(ctx + ": \"" + key + "\" must be a string");
    return v->get<std::string>();
  }
  Result<uint64_t> u64(const char* key) const {
    DWS_ASSIGN_OR_RETURN(const json* v, field(key));
    if (!v->is_number_unsigned()) return meta_error(ctx + ": \"" + key + "\" must be a non-negative integer");
    return v->get<uint64_t>();
  }
  Result<bool> boolean(const char* key) const {
    DWS_ASSIGN_OR_RETURN(const json* v, field(key));
    if (!v->is_boolean()) return meta_error(ctx + ": \"" + key + "\" must be true or false");
    return v->get<bool>();
  }
  Result<Digest128> digest(const char* key) const {
    DWS_ASSIGN_OR_RETURN(std::string s, str(key));
    auto d = digest_from_hex(s);
    if (!d) return meta_error(ctx + ": \"" + key + "\" is not 32 lower-case hex digits");
    return *d;
  }
  Result<DType> dtype(const char* key) const {
    DWS_ASSIGN_OR_RETURN(std::string s, str(key));
    auto d = dtype_from_name(s);
    if (!d) return make_error(ErrorCode::kDtype, "patch metadata: " + ctx + ": unknown dtype '" + s + "'");
    return *d;
  }
  Result<std::vector<std::string>> strings(const char* key) const {
    DWS_ASSIGN_OR_RETURN(const json* v, field(key));
    if (!v->is_array()) return meta_error(ctx + ": \"" + key + "\" must be an array");
    std::vector<std::string> out;
    for (const json& e : *v) {
      if (!e.is_string()) return meta_error(ctx + ": \"" + key + "\" entries must be strings");
      out.push_back(e.get<std::string>());
    }
    return out;
  }
  Result<FileMetadata> string_map(const char* key) const {
    DWS_ASSIGN_OR_RETURN(const json* v, field(key));
    if (!v->is_object()) return meta_error(ctx + ": \"" + key + "\" must be an object");
    FileMetadata out;
    for (auto& [k, val] : v->items()) {
      if (!val.is_string()) return meta_error(ctx + ": \"" + key + "\" values must be strings");
      out.emplace(k, val.get<std::string>());
    }
    return out;
  }
};

}  // namespace

std::string to_json(const PatchHeader& h) {
  json tensors = json::array();
  for (const PatchTensor& t : h.tensors) {
    json e = {{"name", t.name},
              {"change", tensor_change_name(t.change)},
              {"encoding", encoding_name(t.encoding)},
              {"dtype", dtype_name(t.dtype)},
              {"shape", t.shape},
              {"changes", t.changes},
              {"target_digest", digest_hex(t.target_digest)},
              {"payload", t.payload_names},
              {"payload_hash", digest_hex(t.payload_hash)}};
    if (t.encoding == Encoding::kIndices || t.encoding == Encoding::kGaps || t.encoding == Encoding::kGapsZstd) {
      e["index_dtype"] = dtype_name(t.index_dtype);
    }
    if (t.base_digest) e["base_digest"] = digest_hex(*t.base_digest);
    tensors.push_back(std::move(e));
  }
  json removed = json::array();
  for (const PatchRemoved& r : h.removed) removed.push_back({{"name", r.name}, {"base_digest", digest_hex(r.base_digest)}});
  json shards = json::array();
  for (const auto& s : h.target_layout.shards) {
    json names = json::array();
    for (const auto& t : s.tensors) names.push_back(t.name);
    shards.push_back({{"file", s.file}, {"metadata", string_map(s.metadata)}, {"tensors", names}});
  }
  json layout = {{"directory", h.target_layout.is_directory},
                 {"index", h.target_layout.has_index},
                 {"index_metadata", json::parse(h.target_layout.index_metadata_json, nullptr, false)},
                 {"shards", shards}};
  json doc = {{"format", kFormatName},
              {"format_version", h.format_version},
              {"encoding", encoding_name(h.encoding)},
              {"base", {{"state_digest", digest_hex(h.base_state_digest)}}},
              {"target", {{"state_digest", digest_hex(h.target_state_digest)}, {"layout", layout}}},
              {"tensors", tensors},
              {"removed", removed}};
  return doc.dump(-1, ' ', false, json::error_handler_t::strict);
}

Result<PatchHeader> from_json(std::string_view text) {
  auto parsed = parse_json_strict(text, "patch metadata");
  if (!parsed.ok()) {
    return parsed.status().code() == ErrorCode::kDuplicate ? parsed.status()
                                                           : make_error(ErrorCode::kPatchMetadata, parsed.status().message());
  }
  const json doc = std::move(parsed).value();
  if (!doc.is_object()) return meta_error("dws.patch is not a JSON object");
  Reader top{doc, "document"};
  PatchHeader h;
  DWS_ASSIGN_OR_RETURN(std::string format, top.str("format"));
  if (format != kFormatName) return meta_error("format is \"" + format + "\", expected \"dws-patch\"");
  DWS_ASSIGN_OR_RETURN(uint64_t version, top.u64("format_version"));
  if (version != kPatchFormatVersion) {
    return make_error(ErrorCode::kUnsupported, "patch format version " + std::to_string(version) +
                                                   " is not supported (this build reads version " +
                                                   std::to_string(kPatchFormatVersion) + ")");
  }
  h.format_version = static_cast<uint32_t>(version);
  DWS_ASSIGN_OR_RETURN(std::string enc, top.str("encoding"));
  auto encoding = encoding_from_name(enc);
  if (!encoding) return meta_error("unknown encoding \"" + enc + "\"");
  h.encoding = *encoding;

  DWS_ASSIGN_OR_RETURN(const json* base, top.field("base"));
  DWS_ASSIGN_OR_RETURN(const json* target, top.field("target"));
  if (!base->is_object() || !target->is_object()) return meta_error("base and target must be objects");
  DWS_ASSIGN_OR_RETURN(h.base_state_digest, (Reader{*base, "base"}.digest("state_digest")));
  Reader tr{*target, "target"};
  DWS_ASSIGN_OR_RETURN(h.target_state_digest, tr.digest("state_digest"));

  DWS_ASSIGN_OR_RETURN(const json* layout, tr.field("layout"));
  if (!layout->is_object()) return meta_error("target.layout must be an object");
  Reader lr{*layout, "target.layout"};
  DWS_ASSIGN_OR_RETURN(h.target_layout.is_directory, lr.boolean("directory"));
  DWS_ASSIGN_OR_RETURN(h.target_layout.has_index, lr.boolean("index"));
  DWS_ASSIGN_OR_RETURN(const json* index_meta, lr.field("index_metadata"));
  if (!index_meta->is_object()) return meta_error("target.layout.index_metadata must be an object");
  h.target_layout.index_metadata_json = index_meta->dump();
  DWS_ASSIGN_OR_RETURN(const json* shards, lr.field("shards"));
  if (!shards->is_array() || shards->empty()) return meta_error("target.layout.shards must be a non-empty array");
  if (!h.target_layout.is_directory && (shards->size() != 1 || h.target_layout.has_index)) {
    return meta_error("a single-file target has exactly one shard and no index");
  }
  std::set<std::string> shard_files;
  for (const json& s : *shards) {
    if (!s.is_object()) return meta_error("target.layout.shards entries must be objects");
    Reader sr{s, "target.layout.shards[]"};
    CheckpointLayout::Shard shard;
    DWS_ASSIGN_OR_RETURN(shard.file, sr.str("file"));
    if (!is_plain_file_name(shard.file)) return meta_error("shard file name \"" + shard.file + "\" leaves the directory");
    if (!shard_files.insert(shard.file).second) return make_error(ErrorCode::kDuplicate, "patch metadata: shard \"" + shard.file + "\" listed twice");
    DWS_ASSIGN_OR_RETURN(shard.metadata, sr.string_map("metadata"));
    DWS_ASSIGN_OR_RETURN(std::vector<std::string> names, sr.strings("tensors"));
    for (auto& n : names) shard.tensors.push_back({std::move(n), DType::kU8, {}});
    h.target_layout.shards.push_back(std::move(shard));
  }

  DWS_ASSIGN_OR_RETURN(const json* tensors, top.field("tensors"));
  if (!tensors->is_array()) return meta_error("tensors must be an array");
  for (const json& e : *tensors) {
    if (!e.is_object()) return meta_error("tensors entries must be objects");
    Reader r{e, "tensor"};
    PatchTensor t;
    DWS_ASSIGN_OR_RETURN(t.name, r.str("name"));
    r.ctx = "tensor \"" + t.name + "\"";
    DWS_ASSIGN_OR_RETURN(std::string change, r.str("change"));
    if (change == "modified") t.change = TensorChange::kModified;
    else if (change == "added") t.change = TensorChange::kAdded;
    else if (change == "replaced") t.change = TensorChange::kReplaced;
    else return meta_error(r.ctx + ": change \"" + change + "\" is not modified, added or replaced");
    DWS_ASSIGN_OR_RETURN(std::string tenc, r.str("encoding"));
    auto te = encoding_from_name(tenc);
    if (!te || !is_tensor_encoding(*te)) return meta_error(r.ctx + ": unknown encoding \"" + tenc + "\"");
    t.encoding = *te;
    if (t.change != TensorChange::kModified && t.encoding != Encoding::kFull) {
      return meta_error(r.ctx + ": an " + change + " tensor must use the full encoding");
    }
    DWS_ASSIGN_OR_RETURN(t.dtype, r.dtype("dtype"));
    DWS_ASSIGN_OR_RETURN(const json* shape, r.field("shape"));
    if (!shape->is_array() || shape->size() > 64) return meta_error(r.ctx + ": shape must be an array of at most 64 dims");
    for (const json& d : *shape) {
      if (!d.is_number_unsigned()) return meta_error(r.ctx + ": shape entries must be non-negative integers");
      t.shape.push_back(d.get<uint64_t>());
    }
    if (!checked_size_bytes(t.dtype, t.shape)) return make_error(ErrorCode::kShape, "patch metadata: " + r.ctx + ": shape overflows");
    DWS_ASSIGN_OR_RETURN(t.changes, r.u64("changes"));
    if (t.encoding == Encoding::kIndices || t.encoding == Encoding::kGaps || t.encoding == Encoding::kGapsZstd) {
      DWS_ASSIGN_OR_RETURN(t.index_dtype, r.dtype("index_dtype"));
    }
    if (t.change != TensorChange::kAdded) {
      DWS_ASSIGN_OR_RETURN(Digest128 bd, r.digest("base_digest"));
      t.base_digest = bd;
    }
    DWS_ASSIGN_OR_RETURN(t.target_digest, r.digest("target_digest"));
    DWS_ASSIGN_OR_RETURN(t.payload_hash, r.digest("payload_hash"));
    DWS_ASSIGN_OR_RETURN(t.payload_names, r.strings("payload"));
    h.tensors.push_back(std::move(t));
  }
  std::sort(h.tensors.begin(), h.tensors.end(), [](const PatchTensor& a, const PatchTensor& b) { return a.name < b.name; });
  for (size_t i = 1; i < h.tensors.size(); ++i) {
    if (h.tensors[i].name == h.tensors[i - 1].name) {
      return make_error(ErrorCode::kDuplicate, "patch metadata: tensor \"" + h.tensors[i].name + "\" listed twice");
    }
  }
  DWS_ASSIGN_OR_RETURN(const json* removed, top.field("removed"));
  if (!removed->is_array()) return meta_error("removed must be an array");
  std::set<std::string> removed_names;
  for (const json& e : *removed) {
    if (!e.is_object()) return meta_error("removed entries must be objects");
    Reader r{e, "removed tensor"};
    PatchRemoved rm;
    DWS_ASSIGN_OR_RETURN(rm.name, r.str("name"));
    DWS_ASSIGN_OR_RETURN(rm.base_digest, r.digest("base_digest"));
    if (h.find(rm.name) || !removed_names.insert(rm.name).second) {
      return make_error(ErrorCode::kDuplicate, "patch metadata: removed tensor \"" + rm.name + "\" listed twice");
    }
    h.removed.push_back(std::move(rm));
  }
  // Every carried tensor appears in the target layout exactly once; removed ones do not.
  std::set<std::string> in_layout;
  for (auto& shard : h.target_layout.shards) {
    for (auto& spec : shard.tensors) {
      if (spec.name.empty() || !in_layout.insert(spec.name).second) {
        return make_error(ErrorCode::kDuplicate, "patch metadata: target layout lists \"" + spec.name + "\" twice");
      }
      if (removed_names.count(spec.name)) return meta_error("removed tensor \"" + spec.name + "\" is in the target layout");
      if (const PatchTensor* t = h.find(spec.name)) {
        spec.dtype = t->dtype;
        spec.shape = t->shape;
      }
    }
  }
  for (const auto& t : h.tensors) {
    if (!in_layout.count(t.name)) return meta_error("tensor \"" + t.name + "\" is missing from the target layout");
  }
  return h;
}

}  // namespace patch_json

// ---- Patch ----

namespace {
std::string_view role_of(std::string_view tensor, std::string_view payload) {
  if (payload.size() > tensor.size() + 1 && payload.substr(0, tensor.size()) == tensor && payload[tensor.size()] == ':') {
    return payload.substr(tensor.size() + 1);
  }
  return {};
}
}  // namespace

std::vector<codec::PayloadView> payload_views(const Patch& patch, const PatchTensor& t) {
  std::vector<codec::PayloadView> views;
  for (size_t k = 0; k < t.payloads.size(); ++k) {
    views.push_back({role_of(t.name, t.payloads[k]->name), t.payloads[k]->dtype, t.payloads[k]->shape, patch.payload(t, k)});
  }
  return views;
}

Result<Patch> Patch::open(const std::string& path) {
  DWS_ASSIGN_OR_RETURN(io::MappedFile map, io::MappedFile::open(path, io::MappedFile::Mode::kReadOnly));
  auto owner = std::make_shared<io::MappedFile>(std::move(map));
  auto bytes = owner->bytes();
  auto patch = parse(owner, bytes);
  if (!patch.ok()) return patch.status().with_context("patch '" + path + "'");
  return patch;
}

Result<Patch> Patch::from_bytes(std::span<const std::byte> bytes) {
  auto owner = std::make_shared<std::vector<std::byte>>(bytes.begin(), bytes.end());
  std::span<const std::byte> view(*owner);
  return parse(owner, view);
}

Result<Patch> Patch::parse(std::shared_ptr<const void> owner, std::span<const std::byte> bytes) {
  Patch p;
  p.owner_ = std::move(owner);
  p.bytes_ = bytes;
  DWS_ASSIGN_OR_RETURN(p.container_, parse_safetensors(bytes));
  const FileMetadata& meta = p.container_.metadata;
  auto get = [&](std::string_view key) -> const std::string* {
    auto it = meta.find(std::string(key));
    return it == meta.end() ? nullptr : &it->second;
  };
  const std::string* format = get(patch_json::kFormatKey);
  if (!format || *format != patch_json::kFormatName) {
    return make_error(ErrorCode::kPatchMetadata, "not a dws patch (no __metadata__ \"dws.format\": \"dws-patch\")");
  }
  const std::string* version = get(patch_json::kVersionKey);
  if (!version || *version != std::to_string(kPatchFormatVersion)) {
    return make_error(ErrorCode::kUnsupported, "patch format version \"" + (version ? *version : std::string("?")) +
                                                   "\" is not supported (this build reads version 1)");
  }
  const std::string* doc = get(patch_json::kDocumentKey);
  if (!doc) return make_error(ErrorCode::kPatchMetadata, "missing __metadata__ \"dws.patch\"");
  const std::string* doc_digest = get(patch_json::kDocumentDigestKey);
  const std::string got = digest_hex(digest_bytes(std::as_bytes(std::span(doc->data(), doc->size()))));
  if (!doc_digest || *doc_digest != got) {
    return make_error(ErrorCode::kPayloadHash, "metadata document digest " + got + " != recorded " +
                                                   (doc_digest ? *doc_digest : std::string("(missing)")));
  }
  DWS_ASSIGN_OR_RETURN(p.header_, patch_json::from_json(*doc));

  // Resolve payloads: each payload tensor is used by exactly one entry, and every file tensor is a payload.
  std::set<std::string_view> used;
  for (PatchTensor& t : p.header_.tensors) {
    std::vector<codec::PayloadView> views;
    for (const std::string& name : t.payload_names) {
      const TensorInfo* info = p.container_.find(name);
      if (!info) return make_error(ErrorCode::kPatchMetadata, "tensor \"" + t.name + "\": payload \"" + name + "\" is not in the file");
      if (!used.insert(info->name).second) {
        return make_error(ErrorCode::kPatchMetadata, "payload \"" + name + "\" is used twice");
      }
      t.payloads.push_back(info);
      views.push_back({role_of(t.name, info->name), info->dtype, info->shape, {}});
    }
    codec::DecodeParams params{t.encoding, t.dtype, t.numel(), t.changes, t.index_dtype};
    Status st = codec::check_payload_shapes(params, views);
    if (!st.ok()) return st.with_context("tensor \"" + t.name + "\"");
    if (t.encoding == Encoding::kFull) {
      if (views[0].dtype != t.dtype || t.payloads[0]->shape != t.shape) {
        return make_error(ErrorCode::kPatchMetadata, "tensor \"" + t.name + "\": full payload is " +
                                                         std::string(dtype_name(views[0].dtype)) + " " +
                                                         shape_string(t.payloads[0]->shape) + ", metadata says " +
                                                         std::string(dtype_name(t.dtype)) + " " + shape_string(t.shape));
      }
      if (t.changes != t.numel()) {
        return make_error(ErrorCode::kPatchMetadata, "tensor \"" + t.name + "\": full encoding with changes " +
                                                         std::to_string(t.changes) + " != " + std::to_string(t.numel()) + " elements");
      }
    }
  }
  if (used.size() != p.container_.tensors.size()) {
    for (const TensorInfo& info : p.container_.tensors) {
      if (!used.count(info.name)) return make_error(ErrorCode::kPatchMetadata, "file tensor \"" + info.name + "\" is not a payload of any entry");
    }
  }
  return p;
}

std::span<const std::byte> Patch::payload(const PatchTensor& tensor, size_t k) const {
  const TensorInfo& info = *tensor.payloads[k];
  return bytes_.subspan(container_.data_offset() + info.data_begin, info.size_bytes());
}

Status Patch::verify_payload_hashes(size_t threads) const {
  const auto& tensors = header_.tensors;
  std::vector<Status> results(tensors.size());
  ThreadPool pool(threads);
  pool.parallel_for(tensors.size(), [&](size_t i) {
    const PatchTensor& t = tensors[i];
    DigestStream s;
    for (size_t k = 0; k < t.payloads.size(); ++k) s.update(payload(t, k));
    Digest128 got = s.finish();
    if (got != t.payload_hash) {
      results[i] = make_error(ErrorCode::kPayloadHash, "tensor '" + t.name + "': payload hash " + digest_hex(got) +
                                                           " != recorded " + digest_hex(t.payload_hash));
    }
  });
  for (auto& st : results) DWS_RETURN_IF_ERROR(st);
  return Status::Ok();
}

Status Patch::verify(size_t threads) const {
  DWS_RETURN_IF_ERROR(verify_payload_hashes(threads));
  const auto& tensors = header_.tensors;
  std::vector<Status> results(tensors.size());
  ThreadPool pool(threads);
  pool.parallel_for(tensors.size(), [&](size_t i) {
    const PatchTensor& t = tensors[i];
    if (t.encoding == Encoding::kFull) {
      if (tensor_digest(t.name, t.dtype, t.shape, payload(t, 0)) != t.target_digest) {
        results[i] = make_error(ErrorCode::kTargetMismatch, "tensor '" + t.name + "': full payload does not hash to its target digest");
      }
      return;
    }
    if (encoding_needs_base_values(t.encoding)) return;
    std::vector<codec::PayloadView> views = payload_views(*this, t);
    uint64_t seen = 0;
    Status st = codec::decode_changes({t.encoding, t.dtype, t.numel(), t.changes, t.index_dtype}, views, {},
                                      [&](std::span<const uint64_t> pos, std::span<const std::byte>) {
                                        seen += pos.size();
                                        return Status::Ok();
                                      });
    if (st.ok() && seen != t.changes) {
      st = make_error(ErrorCode::kPatchMetadata, "decodes to " + std::to_string(seen) + " changes, metadata says " + std::to_string(t.changes));
    }
    if (!st.ok()) results[i] = st.with_context("tensor '" + t.name + "'");
  });
  for (auto& st : results) DWS_RETURN_IF_ERROR(st);
  return Status::Ok();
}

Result<std::vector<uint64_t>> patch_positions(const Patch& patch, std::string_view tensor) {
  const PatchTensor* t = patch.header().find(tensor);
  if (!t) return make_error(ErrorCode::kNotFound, "the patch does not change tensor '" + std::string(tensor) + "'");
  std::vector<uint64_t> out;
  if (t->encoding == Encoding::kFull) {
    out.resize(t->numel());
    for (uint64_t i = 0; i < out.size(); ++i) out[i] = i;
    return out;
  }
  out.reserve(t->changes);
  Status st = codec::decode_operands({t->encoding, t->dtype, t->numel(), t->changes, t->index_dtype}, payload_views(patch, *t),
                                     [&](std::span<const uint64_t> pos, std::span<const std::byte>) {
                                       out.insert(out.end(), pos.begin(), pos.end());
                                       return Status::Ok();
                                     });
  if (!st.ok()) return st.with_context("tensor '" + t->name + "'");
  return out;
}

}  // namespace dws
