// dws/store.h — where versions live: a flat namespace of immutable objects (docs/store.md).
//
// A Store is the only thing the sync layer knows about a transport. Drivers: a directory (local disk or
// a shared filesystem) and S3-compatible object stores, both opened by open_store().
// Every driver must pass tests/store_conformance_test.cc.
//
// Keys are relative paths: segments of [A-Za-z0-9._-] (not "." or "..", not starting with '.'),
// separated by single '/', at most 512 bytes. They cannot name anything outside the store.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dws/status.h"

namespace dws {

struct ObjectInfo {
  std::string key;
  uint64_t size_bytes = 0;
};

class Store {
 public:
  virtual ~Store() = default;

  // Writes an object atomically: a reader sees no object or all of it, never a prefix. Replaces an
  // existing object. Durable when it returns (directory driver: temp, fsync, rename, fsync dir).
  virtual Status put(std::string_view key, std::span<const std::byte> data) = 0;
  // The same from a local file, streamed (large objects).
  virtual Status put_file(std::string_view key, const std::string& local_path) = 0;
  // Writes the object only if none exists under `key` (E_EXISTS otherwise): the commit primitive that
  // makes two publishers racing for one version number fail instead of overwriting each other.
  virtual Status put_if_absent(std::string_view key, std::span<const std::byte> data) = 0;

  // Whole object, at most max_size_bytes (E_NOT_FOUND when absent; E_INVALID_ARGUMENT when larger).
  virtual Result<std::vector<std::byte>> get(std::string_view key, uint64_t max_size_bytes) = 0;
  // Bytes [offset, offset + length) of an object; E_INVALID_ARGUMENT past its end.
  virtual Result<std::vector<std::byte>> get_range(std::string_view key, uint64_t offset, uint64_t length) = 0;
  // Downloads an object to a local file, atomically (the file appears complete or not at all).
  virtual Status get_file(std::string_view key, const std::string& local_path) = 0;
  // nullopt when absent.
  virtual Result<std::optional<ObjectInfo>> stat(std::string_view key) = 0;
  // Every object whose key starts with `prefix`, sorted by key.
  virtual Result<std::vector<ObjectInfo>> list(std::string_view prefix) = 0;
  // Removes an object; removing an absent one is not an error.
  virtual Status remove(std::string_view key) = 0;

  // "dir:/abs/path" or "s3://bucket/prefix", for messages.
  virtual std::string describe() const = 0;
};

// One object's transfer, as drivers that move bytes over a network report it (the S3 driver does; the
// directory driver does not).
struct TransferProgress {
  std::string_view key;
  bool upload = false;
  uint64_t bytes_done = 0;   // so far; falls back when a part starts over after a retry
  uint64_t bytes_total = 0;
};

struct StoreOptions {
  // S3: the endpoint URL (http:// or https://), ahead of AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL and the
  // profile's endpoint_url. Must be empty for a directory store.
  std::string endpoint;
  // Called as bytes move, from transfer threads (several at once for parallel parts): must be
  // thread-safe and quick. Empty: no reporting.
  std::function<void(const TransferProgress&)> on_progress;
};

// E_INVALID_ARGUMENT naming the key and the rule it breaks, or Ok.
Status check_store_key(std::string_view key);

// Opens a store from a URI: a directory path (created if missing), "file://PATH", or
// "s3://BUCKET[/PREFIX]" (configuration: docs/store.md). Other schemes are E_UNSUPPORTED.
Result<std::unique_ptr<Store>> open_store(const std::string& uri, const StoreOptions& options = {});

}  // namespace dws
