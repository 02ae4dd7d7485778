// dws/notify.h — waking receivers when a version is published (docs/store.md §Notification).
//
// Pulling never depends on it (receivers poll the store); a poke only cuts the latency. The receiver
// runs a NotifyListener; the publisher POSTs to it after each commit. The listener binds to loopback
// unless told otherwise, and on any other address it refuses to start without a shared token, which
// every request must then carry as "Authorization: Bearer <token>". Tokens are never logged.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dws/status.h"

namespace dws {

class NotifyListener {
 public:
  // address: "HOST:PORT" or ":PORT" (loopback); port 0 picks a free port (see port()). E_INVALID_ARGUMENT
  // for a non-loopback host without a token; E_IO when the address cannot be bound.
  static Result<std::unique_ptr<NotifyListener>> start(const std::string& address, const std::string& token);
  virtual ~NotifyListener() = default;

  // Blocks until a notification arrives (returns true) or timeout_seconds pass (false). Notifications
  // that arrived since the last wait count: none is lost between two waits.
  virtual bool wait(double timeout_seconds) = 0;
  virtual uint16_t port() const = 0;
  virtual uint64_t notifications() const = 0;  // accepted so far
  virtual uint64_t refused() const = 0;        // requests refused for a missing or wrong token
};

// POSTs {"version": N} to each URL ("http://host:port", path /v1/notify added when absent), each within
// timeout_seconds. Returns the failures, one line per URL (a poke that fails is not an error: receivers
// still find the version by polling).
std::vector<std::string> notify_receivers(const std::vector<std::string>& urls, uint64_t version, const std::string& token,
                                          double timeout_seconds);

}  // namespace dws
