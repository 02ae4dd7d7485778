#include "progress.h"

#include <unistd.h>

#include <cstdio>

#include "cli_util.h"

namespace dws::cli {

Status ProgressLine::configure(const std::string& mode, bool quiet) {
  ProgressLine& p = get();
  p.tty_ = ::isatty(2);
  if (mode == "auto") p.enabled_ = p.tty_ && !quiet;
  else if (mode == "on") p.enabled_ = true;
  else if (mode == "off") p.enabled_ = false;
  else return make_error(ErrorCode::kInvalidArgument, "--progress '" + mode + "': expected auto, on or off");
  return Status::Ok();
}

ProgressLine& ProgressLine::get() {
  static ProgressLine line;
  return line;
}

void ProgressLine::update(const TransferProgress& p) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  std::lock_guard lock(mu_);
  // A change of direction (a publish that then downloads) or a pause of more than 2 s between transfers
  // (the next version in --follow) ends the line and starts a new one.
  if (!objects_.empty() && (p.upload != upload_ || now - last_event_ > std::chrono::seconds(2))) {
    if (shown_) print_locked(true);
    objects_.clear();
    shown_ = false;
  }
  if (objects_.empty()) started_ = now;
  last_event_ = now;
  upload_ = p.upload;
  objects_[std::string(p.key)] = Object{p.bytes_done, p.bytes_total};
  if (p.bytes_done == p.bytes_total) last_complete_ = now;
  if (now - last_print_ >= (tty_ ? std::chrono::milliseconds(250) : std::chrono::milliseconds(1000))) {
    last_print_ = now;
    print_locked(false);
  }
}

void ProgressLine::finish() {
  std::lock_guard lock(mu_);
  if (shown_ || !objects_.empty()) print_locked(true);
  objects_.clear();
  shown_ = false;
}

void ProgressLine::print_locked(bool final) {
  uint64_t done = 0, total = 0;
  size_t complete = 0;
  for (const auto& [key, o] : objects_) {
    done += o.done;
    total += o.total;
    complete += o.done == o.total;
  }
  // The final line times first byte to last completed object (not the work after the transfers).
  const auto end = final && last_complete_ > started_ ? last_complete_ : std::chrono::steady_clock::now();
  const double seconds = std::chrono::duration<double>(end - started_).count();
  // The rate (and ETA) once there is a quarter second to average over.
  char rate[96] = "";
  if (seconds >= 0.25) {
    const double bytes_per_s = static_cast<double>(done) / seconds;
    const int n = std::snprintf(rate, sizeof rate, ", %s/s", human_bytes(static_cast<uint64_t>(bytes_per_s)).c_str());
    if (!final && bytes_per_s > 0 && total > done) {
      std::snprintf(rate + n, sizeof rate - static_cast<size_t>(n), ", ETA %.0f s", static_cast<double>(total - done) / bytes_per_s);
    }
  }
  char took[32] = "";
  if (final) std::snprintf(took, sizeof took, " in %.1f s", seconds);
  std::fprintf(stderr, "%sdws: %s %s of %s (%zu/%zu objects)%s%s%s", tty_ ? "\r\033[K" : "", upload_ ? "uploaded" : "downloaded",
               human_bytes(done).c_str(), human_bytes(total).c_str(), complete, objects_.size(), rate, took,
               tty_ && !final ? "" : "\n");
  std::fflush(stderr);
  shown_ = !final;
}

}  // namespace dws::cli
