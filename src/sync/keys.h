// keys.h — the store layout of versions (internal; docs/store.md §Layout).
//
//   versions/<N, 20 digits>/manifest.json    commit point: the version exists iff this object does
//   versions/<N>/delta.dwsp                  patch from version N−1
//   versions/<N>/anchor.safetensors          whole checkpoint (single file), or
//   versions/<N>/anchor/<file>               whole checkpoint (sharded: shards + index)
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "dws/checkpoint.h"
#include "dws/sync.h"

namespace dws {

inline constexpr uint64_t kMaxManifestBytes = 64ull << 20;

std::string version_prefix(uint64_t version);  // "versions/<N>/"
std::string manifest_key(uint64_t version);
std::optional<uint64_t> version_of_manifest_key(std::string_view key);

}  // namespace dws
