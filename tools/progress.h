// progress.h — the CLI's transfer progress line: bytes, rate and ETA of store uploads and downloads, on
// stderr. `--progress auto` (the default) shows it only when stderr is a terminal and --quiet is off;
// `on` also writes it to a pipe or log (one line per second), `off` never.
#pragma once

#include <chrono>
#include <map>
#include <mutex>
#include <string>

#include "dws/store.h"

namespace dws::cli {

class ProgressLine {
 public:
  // mode: "auto", "on" or "off" (E_INVALID_ARGUMENT otherwise).
  static Status configure(const std::string& mode, bool quiet);
  // The process's one progress line; its callback is what StoreOptions::on_progress gets.
  static ProgressLine& get();

  bool enabled() const { return enabled_; }
  // Thread-safe; prints at most 4 times a second on a terminal, once a second otherwise.
  void update(const TransferProgress& p);
  // Ends the line (prints the final figures) if anything was shown; the next transfer starts a new one.
  void finish();

 private:
  struct Object {
    uint64_t done = 0, total = 0;
  };
  void print_locked(bool final);

  bool enabled_ = false, tty_ = false;
  std::mutex mu_;
  std::map<std::string, Object> objects_;
  bool upload_ = false, shown_ = false;
  std::chrono::steady_clock::time_point started_, last_print_, last_event_, last_complete_;
};

}  // namespace dws::cli
