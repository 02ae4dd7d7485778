// cmd_sync.h — the store subcommands: publish, pull, log, and verify of a store.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace dws::cli {

struct SyncCommands {
  CLI::App* publish = nullptr;
  CLI::App* pull = nullptr;
  CLI::App* log = nullptr;
  CLI::App* fold = nullptr;
  CLI::App* gc = nullptr;
  uint64_t fold_from = 0, fold_to = 0;
  uint64_t keep_last = 8;
  std::vector<uint64_t> pins;
  bool dry_run = false;
  std::string store, checkpoint, snapshot, encoding = "auto";
  uint64_t anchor_every = 16;
  std::string writer;  // "I/K"; empty: the only writer
  std::optional<uint64_t> step;  // publish --step
  bool anchor = false;
  double max_delta_density = 0.5;
  std::optional<uint64_t> version;
  bool follow = false;
  bool audit = false;                    // pull: rescan the local checkpoint instead of trusting its sidecar
  double poll_seconds = 1.0;
  bool as_json = false;
  std::string listen;                    // pull --follow: notification endpoint
  std::vector<std::string> notify_urls;  // publish: receivers to poke
  std::string token_file;                // shared notification token (else DWS_NOTIFY_TOKEN)
  std::string endpoint;                  // --endpoint: S3 endpoint URL
  std::string progress = "auto";         // --progress auto|on|off
  std::string secret_file;               // --secret-file: authenticated versions (else DWS_SECRET_FILE)
};

// Adds --endpoint, --progress and --secret-file (every command that opens a store).
void add_store_options(CLI::App* command, SyncCommands& c);

// Registers the subcommands; `threads` and `quiet` are the app's global options.
void add_sync_commands(CLI::App& app, SyncCommands& c);
// Runs the parsed subcommand, if one of these was given; nullopt otherwise.
std::optional<int> run_sync_command(const SyncCommands& c, size_t threads, bool quiet);

// Whether `path` names a store (a URI with a scheme, or a directory holding "versions/").
bool looks_like_store(const std::string& path);
int verify_store_command(const SyncCommands& c, const std::string& store, std::optional<uint64_t> version, bool full, size_t threads,
                         bool quiet);

}  // namespace dws::cli
