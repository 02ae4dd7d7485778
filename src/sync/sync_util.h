// sync_util.h — small helpers shared by publish/pull (sync.cc) and fold/gc (maintain.cc) (internal).
#pragma once

#include <string>

#include "dws/checkpoint.h"
#include "dws/status.h"

namespace dws::sync_util {

std::string random_token();                             // 16 hex digits, for unique object prefixes
uint64_t now_unix_ms();
Result<std::string> file_xxh3(const std::string& path);  // XXH3-128 hex of a local file
Result<std::string> checkpoint_state_digest(const Checkpoint& cp, size_t threads);
void remove_quietly(const std::string& path);           // file or tree; errors ignored
std::string sidecar_path(const std::string& local_path);

}  // namespace dws::sync_util
