// keys.h — the store layout of versions (internal; docs/store.md §Layout).
//
//   versions/<N, 20 digits>/manifest.json    commit point: the version exists iff this object does
//   versions/<N>/delta.dwsp                  patch from version N−1
//   versions/<N>/anchor.safetensors          whole checkpoint (single file), or
//   versions/<N>/anchor/<file>               whole checkpoint (sharded: shards + index)
//   versions/<N>/parts/<I>-of-<K>.json       several writers: writer I's committed part (writers.cc)
// (files actually live under a per-attempt token: versions/<N>/<token>/...)
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "dws/auth.h"
#include "dws/checkpoint.h"
#include "dws/sync.h"

namespace dws {

inline constexpr uint64_t kMaxManifestBytes = 64ull << 20;

// Authenticated documents (manifests, folds, parts; dws/auth.h): "auth" = {alg, key_id, mac}, the
// HMAC-SHA256 of the document without "auth", dumped compactly (nlohmann sorts keys, so equal contents
// give equal bytes whatever the formatting of the stored text).
void sign_document(nlohmann::json& doc, const AuthKey& key);
// With a key: E_AUTH unless `doc` carries a valid signature by it. Without one, "auth" is ignored.
Status check_document(const nlohmann::json& doc, const AuthKey* key, std::string_view what);
// A file entry of a manifest or part: key, role, name, size_bytes, xxh3 and, when known, sha256.
nlohmann::json file_entry_json(const VersionFile& f);
// Reads size_bytes, xxh3 and sha256 of an entry into f (hex checked). With a key, sha256 is required (E_AUTH).
Status read_file_hashes(const nlohmann::json& entry, VersionFile& f, const AuthKey* auth);

std::string version_prefix(uint64_t version);  // "versions/<N>/"
std::string manifest_key(uint64_t version);
std::optional<uint64_t> version_of_manifest_key(std::string_view key);

inline constexpr uint32_t kMaxWriters = 4096;
std::string parts_prefix(uint64_t version);                                  // "versions/<N>/parts/"
std::string part_key(uint64_t version, uint32_t writer, uint32_t writers);   // ".../parts/<I>-of-<K>.json"
std::string writer_shard_name(uint32_t writer, uint32_t writers);            // "part-00000-of-00002.safetensors"

}  // namespace dws

namespace dws {

// Folds: "folds/<A, 20 digits>-<B, 20 digits>/manifest.json" commits "folds/<A>-<B>/<token>/fold.dwsp".
std::string fold_prefix(uint64_t from_version, uint64_t to_version);
std::string fold_manifest_key(uint64_t from_version, uint64_t to_version);

struct FoldManifest {
  uint64_t from_version = 0, to_version = 0;
  std::string base_state_digest, state_digest;
  uint64_t changes = 0;
  VersionFile file;  // role "fold"
};
std::string serialize_fold_manifest(const FoldManifest& m, const AuthKey* auth = nullptr);
Result<FoldManifest> parse_fold_manifest(std::string_view json_text, const AuthKey* auth = nullptr);
// Every committed fold (unreadable manifests, and with a key unsigned or badly signed ones, are skipped).
Result<std::vector<FoldManifest>> list_folds(Store& store, const AuthKey* auth);

}  // namespace dws
