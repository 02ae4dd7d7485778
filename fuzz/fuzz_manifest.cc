// Fuzz target: the store's JSON documents from hostile bytes: version manifests and fold manifests,
// unsigned and as a receiver holding a key (the signature check runs on every parsed document).
// Properties: parsed or refused with a message; an accepted manifest's files all lie under their
// version's prefix; nothing crashes or leaks.
#include <cstdint>
#include <cstdlib>

#include "dws/auth.h"
#include "dws/sync.h"
#include "sync/keys.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const dws::AuthKey key = [] {
    const char secret[] = "fuzz-secret-0123456789abcdef";
    return dws::AuthKey::from_secret(std::as_bytes(std::span(secret, sizeof secret - 1))).value();
  }();
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  for (const dws::AuthKey* auth : {static_cast<const dws::AuthKey*>(nullptr), &key}) {
    auto m = dws::parse_manifest(text, auth);
    if (m.ok()) {
      for (const auto& f : m->files) {
        if (f.key.rfind(dws::version_prefix(m->version), 0) != 0) std::abort();
        if (!dws::check_store_key(f.key).ok()) std::abort();
      }
      (void)dws::serialize_manifest(*m, auth);
    } else if (m.status().message().empty()) {
      std::abort();
    }
    auto f = dws::parse_fold_manifest(text, auth);
    if (f.ok() && f->file.key.rfind(dws::fold_prefix(f->from_version, f->to_version), 0) != 0) std::abort();
  }
  return 0;
}
