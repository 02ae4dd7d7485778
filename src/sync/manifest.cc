// Version manifests: the JSON document whose commit makes a version visible (docs/store.md).
#include <cinttypes>
#include <cstdio>

#include "format/json_strict.h"
#include "sync/keys.h"

namespace dws {

namespace {

using json = nlohmann::json;

constexpr std::string_view kManifestFormat = "dws-version";
constexpr uint64_t kManifestFormatVersion = 2;  // 2: state digests are format-v2 sums
constexpr size_t kMaxFiles = 100000;

Status bad(const std::string& msg) { return make_error(ErrorCode::kPatchMetadata, "manifest: " + msg); }

bool is_hex(const std::string& s, size_t digits) {
  if (s.size() != digits) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}
bool is_hex32(const std::string& s) { return is_hex(s, 32); }

// Field readers for manifest objects: E_PATCH_METADATA naming the field when it is missing or mistyped.
Status get_u64(const json& obj, const char* key, uint64_t* out) {
  auto it = obj.find(key);
  if (it == obj.end() || !it->is_number_unsigned()) return bad(std::string("'") + key + "' missing or not an unsigned integer");
  *out = it->get<uint64_t>();
  return Status::Ok();
}

Status get_str(const json& obj, const char* key, std::string* out) {
  auto it = obj.find(key);
  if (it == obj.end() || !it->is_string()) return bad(std::string("'") + key + "' missing or not a string");
  *out = it->get<std::string>();
  return Status::Ok();
}

Status get_bool(const json& obj, const char* key, bool* out) {
  auto it = obj.find(key);
  if (it == obj.end() || !it->is_boolean()) return bad(std::string("'") + key + "' missing or not a boolean");
  *out = it->get<bool>();
  return Status::Ok();
}

}  // namespace

uint64_t VersionManifest::bytes_of(std::string_view role) const {
  uint64_t n = 0;
  for (const auto& f : files) {
    if (f.role == role) n += f.size_bytes;
  }
  return n;
}

nlohmann::json file_entry_json(const VersionFile& f) {
  json e = {{"key", f.key}, {"role", f.role}, {"name", f.name}, {"size_bytes", f.size_bytes}, {"xxh3", f.xxh3}};
  if (!f.sha256.empty()) e["sha256"] = f.sha256;
  return e;
}

Status read_file_hashes(const nlohmann::json& entry, VersionFile& f, const AuthKey* auth) {
  DWS_RETURN_IF_ERROR(get_u64(entry, "size_bytes", &f.size_bytes));
  DWS_RETURN_IF_ERROR(get_str(entry, "xxh3", &f.xxh3));
  if (!is_hex32(f.xxh3)) return bad("file " + f.key + ": xxh3 is not 32 lower-case hex digits");
  if (entry.contains("sha256")) {
    DWS_RETURN_IF_ERROR(get_str(entry, "sha256", &f.sha256));
    if (!is_hex(f.sha256, 64)) return bad("file " + f.key + ": sha256 is not 64 lower-case hex digits");
  } else if (auth) {
    return make_error(ErrorCode::kAuth, "manifest: file " + f.key + " has no sha256, which a signed version lists for every file");
  }
  return Status::Ok();
}

namespace {
// The bytes a signature covers: the document without "auth", dumped compactly (keys sorted).
std::string signed_text(const json& doc) {
  json copy = doc;
  copy.erase("auth");
  return copy.dump();
}
}  // namespace

void sign_document(nlohmann::json& doc, const AuthKey& key) {
  const std::string mac = key.sign(signed_text(doc));
  doc["auth"] = {{"alg", "hmac-sha256"}, {"key_id", key.id()}, {"mac", mac}};
}

Status check_document(const nlohmann::json& doc, const AuthKey* key, std::string_view what) {
  if (!key) return Status::Ok();
  const std::string ctx = std::string(what) + ": ";
  auto it = doc.find("auth");
  if (it == doc.end()) {
    return make_error(ErrorCode::kAuth, ctx + "not signed, but this receiver holds key " + key->id() + " and takes only signed versions");
  }
  const json& a = *it;
  if (!a.is_object() || !a.contains("alg") || !a.contains("key_id") || !a.contains("mac") || !a["alg"].is_string() ||
      !a["key_id"].is_string() || !a["mac"].is_string()) {
    return make_error(ErrorCode::kAuth, ctx + "'auth' is not an object with string alg, key_id and mac");
  }
  if (a["alg"] != "hmac-sha256") return make_error(ErrorCode::kAuth, ctx + "signed with '" + a["alg"].get<std::string>().substr(0, 32) + "', not hmac-sha256");
  const std::string id = a["key_id"].get<std::string>();
  if (id != key->id()) {
    return make_error(ErrorCode::kAuth, ctx + "signed with key " + id.substr(0, 32) + ", not with this receiver's key " + key->id());
  }
  if (!key->verify(signed_text(doc), a["mac"].get<std::string>())) {
    return make_error(ErrorCode::kAuth, ctx + "the signature by key " + key->id() + " does not match its contents (altered after signing)");
  }
  return Status::Ok();
}

std::string serialize_manifest(const VersionManifest& m, const AuthKey* auth) {
  json doc = {{"format", kManifestFormat},
              {"format_version", kManifestFormatVersion},
              {"version", m.version},
              {"has_anchor", m.has_anchor},
              {"sharded", m.sharded},
              {"state_digest", m.state_digest},
              {"changes", m.changes},
              {"elements", m.elements},
              {"model_bytes", m.model_bytes},
              {"created_unix_ms", m.created_unix_ms}};
  if (m.writers > 1) doc["writers"] = m.writers;
  if (m.step) doc["step"] = *m.step;
  if (m.base_version) {
    doc["base_version"] = *m.base_version;
    doc["base_state_digest"] = m.base_state_digest;
  }
  json files = json::array();
  for (const auto& f : m.files) files.push_back(file_entry_json(f));
  doc["files"] = std::move(files);
  if (auth) sign_document(doc, *auth);
  return doc.dump(1) + "\n";
}

Result<VersionManifest> parse_manifest(std::string_view text, const AuthKey* auth) {
  DWS_ASSIGN_OR_RETURN(json doc, parse_json_strict(text, "version manifest"));
  if (!doc.is_object()) return bad("not a JSON object");
  DWS_RETURN_IF_ERROR(check_document(doc, auth, "version manifest"));
  std::string format;
  uint64_t format_version = 0;
  DWS_RETURN_IF_ERROR(get_str(doc, "format", &format));
  if (format != kManifestFormat) return bad("format is '" + format + "', not 'dws-version'");
  DWS_RETURN_IF_ERROR(get_u64(doc, "format_version", &format_version));
  if (format_version != kManifestFormatVersion) {
    return make_error(ErrorCode::kUnsupported, "manifest: format_version " + std::to_string(format_version) + " (this dws reads " + std::to_string(kManifestFormatVersion) + ")");
  }
  VersionManifest m;
  DWS_RETURN_IF_ERROR(get_u64(doc, "version", &m.version));
  DWS_RETURN_IF_ERROR(get_bool(doc, "has_anchor", &m.has_anchor));
  DWS_RETURN_IF_ERROR(get_bool(doc, "sharded", &m.sharded));
  DWS_RETURN_IF_ERROR(get_str(doc, "state_digest", &m.state_digest));
  DWS_RETURN_IF_ERROR(get_u64(doc, "changes", &m.changes));
  DWS_RETURN_IF_ERROR(get_u64(doc, "elements", &m.elements));
  DWS_RETURN_IF_ERROR(get_u64(doc, "model_bytes", &m.model_bytes));
  DWS_RETURN_IF_ERROR(get_u64(doc, "created_unix_ms", &m.created_unix_ms));
  if (!is_hex32(m.state_digest)) return bad("state_digest is not 32 lower-case hex digits");
  if (doc.contains("writers")) {
    uint64_t w = 0;
    DWS_RETURN_IF_ERROR(get_u64(doc, "writers", &w));
    if (w < 2 || w > kMaxWriters) return bad("writers " + std::to_string(w) + " outside [2, " + std::to_string(kMaxWriters) + "]");
    if (!m.sharded && m.has_anchor) return bad("a version of several writers has a sharded anchor");
    m.writers = static_cast<uint32_t>(w);
  }
  if (doc.contains("step")) {
    uint64_t step = 0;
    DWS_RETURN_IF_ERROR(get_u64(doc, "step", &step));
    m.step = step;
  }
  if (doc.contains("base_version")) {
    uint64_t b = 0;
    DWS_RETURN_IF_ERROR(get_u64(doc, "base_version", &b));
    if (b + 1 != m.version) return bad("base_version " + std::to_string(b) + " of version " + std::to_string(m.version) + " is not the previous version");
    m.base_version = b;
    DWS_RETURN_IF_ERROR(get_str(doc, "base_state_digest", &m.base_state_digest));
    if (!is_hex32(m.base_state_digest)) return bad("base_state_digest is not 32 lower-case hex digits");
  }
  auto files = doc.find("files");
  if (files == doc.end() || !files->is_array()) return bad("'files' missing or not an array");
  if (files->size() > kMaxFiles) return bad("more than " + std::to_string(kMaxFiles) + " files");
  size_t deltas = 0, anchors = 0;
  for (const json& f : *files) {
    if (!f.is_object()) return bad("a file entry is not an object");
    VersionFile vf;
    DWS_RETURN_IF_ERROR(get_str(f, "key", &vf.key));
    DWS_RETURN_IF_ERROR(get_str(f, "role", &vf.role));
    DWS_RETURN_IF_ERROR(get_str(f, "name", &vf.name));
    if (Status st = check_store_key(vf.key); !st.ok()) return bad(st.message());
    if (vf.key.rfind(version_prefix(m.version), 0) != 0) return bad("file " + vf.key + " lies outside its version's prefix");
    DWS_RETURN_IF_ERROR(read_file_hashes(f, vf, auth));
    if (vf.role == "delta") {
      ++deltas;
      if (!vf.name.empty()) return bad("a delta file has a name");
    } else if (vf.role == "anchor") {
      ++anchors;
      if (!vf.name.empty() && !is_plain_file_name(vf.name)) return bad("anchor file name '" + vf.name + "' is not a plain file name");
      if (vf.name.empty() == m.sharded) return bad("anchor file names must be given exactly when the anchor is sharded");
    } else {
      return bad("file " + vf.key + " has unknown role '" + vf.role + "'");
    }
    m.files.push_back(std::move(vf));
  }
  if (deltas != (m.base_version ? 1u : 0u)) return bad("a version has one delta file exactly when it has a base_version");
  if ((anchors > 0) != m.has_anchor) return bad("has_anchor disagrees with the anchor files listed");
  if (!m.has_anchor && !m.base_version) return bad("a version needs an anchor or a delta");
  if (!m.sharded && anchors > 1) return bad("a single-file anchor lists several files");
  return m;
}

std::string version_prefix(uint64_t version) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "versions/%020" PRIu64 "/", version);
  return buf;
}

std::string manifest_key(uint64_t version) { return version_prefix(version) + "manifest.json"; }

std::string parts_prefix(uint64_t version) { return version_prefix(version) + "parts/"; }

std::string part_key(uint64_t version, uint32_t writer, uint32_t writers) {
  return parts_prefix(version) + std::to_string(writer) + "-of-" + std::to_string(writers) + ".json";
}

std::string writer_shard_name(uint32_t writer, uint32_t writers) {
  char name[64];
  std::snprintf(name, sizeof name, "part-%05u-of-%05u.safetensors", writer, writers);
  return name;
}

std::optional<uint64_t> version_of_manifest_key(std::string_view key) {
  constexpr std::string_view kHead = "versions/";
  constexpr std::string_view kTail = "/manifest.json";
  if (key.size() != kHead.size() + 20 + kTail.size() || key.substr(0, kHead.size()) != kHead ||
      key.substr(kHead.size() + 20) != kTail) {
    return std::nullopt;
  }
  uint64_t v = 0;
  for (char c : key.substr(kHead.size(), 20)) {
    if (c < '0' || c > '9') return std::nullopt;
    if (v > (UINT64_MAX - static_cast<uint64_t>(c - '0')) / 10) return std::nullopt;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  return v;
}

Result<std::vector<uint64_t>> list_versions(Store& store) {
  DWS_ASSIGN_OR_RETURN(std::vector<ObjectInfo> objects, store.list("versions/"));
  std::vector<uint64_t> out;
  for (const auto& o : objects) {
    if (auto v = version_of_manifest_key(o.key)) out.push_back(*v);
  }
  return out;  // keys sort as the zero-padded numbers do
}

Result<VersionManifest> read_manifest(Store& store, uint64_t version, const AuthKey* auth) {
  auto bytes = store.get(manifest_key(version), kMaxManifestBytes);
  if (!bytes.ok()) return bytes.status().with_context("version " + std::to_string(version));
  auto m = parse_manifest(std::string_view(reinterpret_cast<const char*>(bytes->data()), bytes->size()), auth);
  if (!m.ok()) return m.status().with_context("version " + std::to_string(version));
  if (m->version != version) {
    return bad("the manifest under version " + std::to_string(version) + " says version " + std::to_string(m->version));
  }
  return m;
}

}  // namespace dws

namespace dws {

std::string fold_prefix(uint64_t from_version, uint64_t to_version) {
  char buf[80];
  std::snprintf(buf, sizeof buf, "folds/%020" PRIu64 "-%020" PRIu64 "/", from_version, to_version);
  return buf;
}

std::string fold_manifest_key(uint64_t from_version, uint64_t to_version) {
  return fold_prefix(from_version, to_version) + "manifest.json";
}

std::string serialize_fold_manifest(const FoldManifest& m, const AuthKey* auth) {
  json entry = file_entry_json(m.file);
  entry.erase("role");
  entry.erase("name");
  nlohmann::json doc = {{"format", "dws-fold"},
                        {"format_version", kManifestFormatVersion},
                        {"from_version", m.from_version},
                        {"to_version", m.to_version},
                        {"base_state_digest", m.base_state_digest},
                        {"state_digest", m.state_digest},
                        {"changes", m.changes},
                        {"file", std::move(entry)}};
  if (auth) sign_document(doc, *auth);
  return doc.dump(1) + "\n";
}

Result<FoldManifest> parse_fold_manifest(std::string_view text, const AuthKey* auth) {
  DWS_ASSIGN_OR_RETURN(nlohmann::json doc, parse_json_strict(text, "fold manifest"));
  if (!doc.is_object()) return bad("fold manifest: not a JSON object");
  DWS_RETURN_IF_ERROR(check_document(doc, auth, "fold manifest"));
  std::string format;
  uint64_t format_version = 0;
  DWS_RETURN_IF_ERROR(get_str(doc, "format", &format));
  if (format != "dws-fold") return bad("format is '" + format + "', not 'dws-fold'");
  DWS_RETURN_IF_ERROR(get_u64(doc, "format_version", &format_version));
  if (format_version != kManifestFormatVersion) return make_error(ErrorCode::kUnsupported, "fold manifest: format_version " + std::to_string(format_version));
  FoldManifest m;
  DWS_RETURN_IF_ERROR(get_u64(doc, "from_version", &m.from_version));
  DWS_RETURN_IF_ERROR(get_u64(doc, "to_version", &m.to_version));
  DWS_RETURN_IF_ERROR(get_str(doc, "base_state_digest", &m.base_state_digest));
  DWS_RETURN_IF_ERROR(get_str(doc, "state_digest", &m.state_digest));
  DWS_RETURN_IF_ERROR(get_u64(doc, "changes", &m.changes));
  auto file = doc.find("file");
  if (file == doc.end() || !file->is_object()) return bad("fold manifest: 'file' missing or not an object");
  m.file.role = "fold";
  DWS_RETURN_IF_ERROR(get_str(*file, "key", &m.file.key));
  DWS_RETURN_IF_ERROR(read_file_hashes(*file, m.file, auth));
  if (m.from_version >= m.to_version) return bad("fold from " + std::to_string(m.from_version) + " to " + std::to_string(m.to_version));
  if (!is_hex32(m.base_state_digest) || !is_hex32(m.state_digest)) return bad("fold digests are not hex");
  if (Status st = check_store_key(m.file.key); !st.ok()) return bad(st.message());
  if (m.file.key.rfind(fold_prefix(m.from_version, m.to_version), 0) != 0) return bad("fold file outside its prefix");
  return m;
}

Result<std::vector<FoldManifest>> list_folds(Store& store, const AuthKey* auth) {
  DWS_ASSIGN_OR_RETURN(std::vector<ObjectInfo> objects, store.list("folds/"));
  std::vector<FoldManifest> out;
  for (const auto& o : objects) {
    if (o.key.size() < 14 || o.key.compare(o.key.size() - 14, 14, "/manifest.json") != 0) continue;
    auto bytes = store.get(o.key, kMaxManifestBytes);
    if (!bytes.ok()) continue;
    auto m = parse_fold_manifest(std::string_view(reinterpret_cast<const char*>(bytes->data()), bytes->size()), auth);
    if (m.ok() && fold_manifest_key(m->from_version, m->to_version) == o.key) out.push_back(std::move(*m));
  }
  return out;
}

}  // namespace dws
