// cli_util.h — what every dws subcommand shares: exit codes (docs/cli.md), error printing, formatting.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <string>

#include "dws/status.h"

namespace dws::cli {

enum ExitCode : int {
  kExitOk = 0,
  kExitInternal = 1,
  kExitUsage = 2,
  kExitBadInput = 3,
  kExitMismatch = 4,
  kExitIo = 5,
  kExitPendingJournal = 6,
  kExitDenied = 7,       // fix the credentials or the bucket policy
  kExitUnavailable = 8,  // the store was unreachable until the retry deadline; try again later
  kExitAuth = 9,         // a version is not signed by our key (--secret-file): not published by the trainer
};

inline int exit_code_for(dws::ErrorCode code) {
  switch (code) {
    case dws::ErrorCode::kOk: return kExitOk;
    case dws::ErrorCode::kInvalidArgument: return kExitUsage;
    case dws::ErrorCode::kIo:
    case dws::ErrorCode::kNotFound:
    case dws::ErrorCode::kExists:
    case dws::ErrorCode::kDevice: return kExitIo;
    case dws::ErrorCode::kBaseMismatch:
    case dws::ErrorCode::kTargetMismatch: return kExitMismatch;
    case dws::ErrorCode::kPendingJournal: return kExitPendingJournal;
    case dws::ErrorCode::kInternal: return kExitInternal;
    case dws::ErrorCode::kDenied: return kExitDenied;
    case dws::ErrorCode::kUnavailable: return kExitUnavailable;
    case dws::ErrorCode::kAuth: return kExitAuth;
    default: return kExitBadInput;
  }
}

inline int fail(const dws::Status& st) {
  std::cerr << "dws: error: " << st.to_string() << "\n";
  return exit_code_for(st.code());
}

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

inline std::string human_bytes(uint64_t b) {
  char buf[64];
  if (b >= (1ull << 30)) std::snprintf(buf, sizeof buf, "%.2f GiB", static_cast<double>(b) / (1ull << 30));
  else if (b >= (1ull << 20)) std::snprintf(buf, sizeof buf, "%.2f MiB", static_cast<double>(b) / (1ull << 20));
  else if (b >= (1ull << 10)) std::snprintf(buf, sizeof buf, "%.1f KiB", static_cast<double>(b) / (1ull << 10));
  else std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(b));
  return buf;
}

}  // namespace dws::cli
