#include "cmd_sync.h"

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "cli_util.h"
#include "progress.h"
#include "dws/digest.h"
#include "dws/notify.h"
#include "dws/sync.h"

namespace dws::cli {

namespace {

using json = nlohmann::json;

// The publisher's default snapshot: one per store, under $XDG_CACHE_HOME (or ~/.cache)/dws.
std::string default_snapshot(const Store& store) {
  std::string base;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) base = x;
  else if (const char* h = std::getenv("HOME"); h && *h) base = std::string(h) + "/.cache";
  else base = "/tmp";
  const std::string id = store.describe();
  const Digest128 d = digest_bytes(std::span(reinterpret_cast<const std::byte*>(id.data()), id.size()));
  return base + "/dws/publisher-" + digest_hex(d).substr(0, 16);
}

std::string format_time(uint64_t unix_ms) {
  const std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// The shared notification token: --notify-token-file, else $DWS_NOTIFY_TOKEN, else none.
Result<std::string> notify_token(const SyncCommands& c) {
  if (!c.token_file.empty()) {
    std::ifstream in(c.token_file);
    std::string token;
    if (!in || !std::getline(in, token)) {
      return make_error(ErrorCode::kNotFound, "cannot read a token from --notify-token-file " + c.token_file);
    }
    while (!token.empty() && (token.back() == '\r' || token.back() == ' ')) token.pop_back();
    if (token.empty()) return make_error(ErrorCode::kInvalidArgument, "--notify-token-file " + c.token_file + " is empty");
    return token;
  }
  const char* env = std::getenv("DWS_NOTIFY_TOKEN");
  return std::string(env ? env : "");
}

// The key of authenticated versions: --secret-file, else $DWS_SECRET_FILE, else none (unsigned). The
// secret itself is never printed; messages name the file and the key's id.
Result<std::optional<AuthKey>> auth_key(const SyncCommands& c) {
  std::string path = c.secret_file;
  if (path.empty()) {
    const char* env = std::getenv("DWS_SECRET_FILE");
    if (env && *env) path = env;
  }
  if (path.empty()) return std::optional<AuthKey>();
  DWS_ASSIGN_OR_RETURN(AuthKey key, AuthKey::from_file(path));
  return std::optional<AuthKey>(std::move(key));
}

// Opens STORE with --endpoint, and with the progress line when it is on (--progress).
Result<std::unique_ptr<Store>> open_cli_store(const SyncCommands& c, const std::string& uri, bool quiet) {
  DWS_RETURN_IF_ERROR(ProgressLine::configure(c.progress, quiet));
  StoreOptions o;
  o.endpoint = c.endpoint;
  if (ProgressLine::get().enabled()) o.on_progress = [](const TransferProgress& p) { ProgressLine::get().update(p); };
  return open_store(uri, o);
}

int cmd_publish(const SyncCommands& c, size_t threads, bool quiet) {
  auto store = open_cli_store(c, c.store, quiet);
  if (!store.ok()) return fail(store.status());
  auto enc = encoding_from_name(c.encoding);
  if (!enc || *enc == Encoding::kFull) {
    return fail(make_error(ErrorCode::kInvalidArgument, "--encoding '" + c.encoding + "' is not one of auto, native, indices, gaps, gaps_zstd, xor_zstd"));
  }
  PublishOptions o;
  if (!c.writer.empty()) {
    unsigned i = 0, k = 0;
    char tail = 0;
    if (std::sscanf(c.writer.c_str(), "%u/%u%c", &i, &k, &tail) != 2 || k < 2 || i >= k) {
      return fail(make_error(ErrorCode::kInvalidArgument, "--writer '" + c.writer + "' is not I/K with 0 <= I < K and K >= 2"));
    }
    o.writer_index = i;
    o.writers = k;
  }
  o.anchor_every = c.anchor_every;
  o.anchor = c.anchor;
  o.step = c.step;
  o.max_delta_density = c.max_delta_density;
  o.snapshot_path = c.snapshot.empty() ? default_snapshot(**store) : c.snapshot;
  if (c.snapshot.empty() && o.writers > 1) o.snapshot_path += "-writer" + std::to_string(o.writer_index);
  o.patch.encoding = *enc;
  o.patch.threads = threads;
  o.notify_urls = c.notify_urls;
  auto token = notify_token(c);
  if (!token.ok()) return fail(token.status());
  o.notify_token = *token;
  auto key = auth_key(c);
  if (!key.ok()) return fail(key.status());
  if (*key) o.auth = &**key;
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(o.snapshot_path).parent_path(), ec);
  const auto t0 = std::chrono::steady_clock::now();
  auto r = publish(**store, c.checkpoint, o);
  ProgressLine::get().finish();
  if (!r.ok()) return fail(r.status());
  if (!quiet && r->already_published) {
    std::printf("step %llu is already in %s: %s version %llu; nothing published\n", static_cast<unsigned long long>(*o.step),
                (*store)->describe().c_str(), r->committed ? "committed" : "our part of pending",
                static_cast<unsigned long long>(r->version));
  } else if (!quiet) {
    std::string what;
    if (r->has_delta) {
      char buf[160];
      std::snprintf(buf, sizeof buf, "delta %s (%llu changes, %.2f bytes/change)", human_bytes(r->delta_bytes).c_str(),
                    static_cast<unsigned long long>(r->changes),
                    r->changes ? static_cast<double>(r->delta_bytes) / static_cast<double>(r->changes) : 0.0);
      what = buf;
    }
    if (r->has_anchor) what += (what.empty() ? "" : " + ") + std::string("anchor ") + human_bytes(r->anchor_bytes);
    if (r->committed) {
      std::printf("published version %llu to %s: %s; state %s (%.2fs)\n", static_cast<unsigned long long>(r->version),
                  (*store)->describe().c_str(), what.c_str(), r->state_digest.c_str(), seconds_since(t0));
    } else {
      std::printf("sent writer %u's part of version %llu to %s: %s; the version commits when every writer's part is in (%.2fs)\n",
                  o.writer_index, static_cast<unsigned long long>(r->version), (*store)->describe().c_str(), what.c_str(),
                  seconds_since(t0));
    }
  }
  for (const auto& f : r->notify_failures) std::fprintf(stderr, "dws: warning: notify %s (receivers will find the version by polling)\n", f.c_str());
  return kExitOk;
}

void print_pull(const std::string& local, const PullResult& r, double seconds) {
  std::printf("%s at version %llu (%s%s%zu deltas, %s downloaded); state %s (%.2fs)\n", local.c_str(),
              static_cast<unsigned long long>(r.version), r.rescanned ? "rescanned, " : "",
              r.used_anchor ? "from an anchor, " : (r.used_fold ? "through a fold, " : ""),
              r.applied.size(), human_bytes(r.bytes_downloaded).c_str(), r.state_digest.c_str(), seconds);
  std::fflush(stdout);
}

int cmd_pull(const SyncCommands& c, size_t threads, bool quiet) {
  auto store = open_cli_store(c, c.store, quiet);
  if (!store.ok()) return fail(store.status());
  auto key = auth_key(c);
  if (!key.ok()) return fail(key.status());
  const AuthKey* auth = *key ? &**key : nullptr;
  if (!c.follow) {
    if (!c.listen.empty()) return fail(make_error(ErrorCode::kInvalidArgument, "--listen needs --follow"));
    PullOptions o;
    o.version = c.version;
    o.threads = threads;
    o.audit = c.audit;
    o.auth = auth;
    const auto t0 = std::chrono::steady_clock::now();
    auto r = pull(**store, c.checkpoint, o);
    ProgressLine::get().finish();
    if (!r.ok()) return fail(r.status());
    if (!quiet) print_pull(c.checkpoint, *r, seconds_since(t0));
    return kExitOk;
  }
  if (c.version) return fail(make_error(ErrorCode::kInvalidArgument, "--follow pulls the latest version; drop --version"));
  std::unique_ptr<NotifyListener> listener;
  if (!c.listen.empty()) {
    auto token = notify_token(c);
    if (!token.ok()) return fail(token.status());
    auto l = NotifyListener::start(c.listen, *token);
    if (!l.ok()) return fail(l.status());
    listener = std::move(*l);
    if (!quiet) std::fprintf(stderr, "dws pull: listening for notifications on port %u\n", listener->port());
  }
  FollowOptions o;
  o.poll_seconds = c.poll_seconds;
  o.audit = c.audit;
  o.listener = listener.get();
  o.threads = threads;
  o.auth = auth;
  auto t0 = std::chrono::steady_clock::now();
  o.on_unavailable = [&](const Status& st) {
    ProgressLine::get().finish();
    std::fprintf(stderr, "dws: warning: %s (still following; %s stays at its last version)\n", st.to_string().c_str(), c.checkpoint.c_str());
  };
  o.on_pull = [&](const PullResult& r) {
    ProgressLine::get().finish();
    if (!quiet) print_pull(c.checkpoint, r, seconds_since(t0));
    t0 = std::chrono::steady_clock::now();
  };
  return fail(follow(**store, c.checkpoint, o));
}

int cmd_log(const SyncCommands& c) {
  auto store = open_cli_store(c, c.store, false);
  if (!store.ok()) return fail(store.status());
  auto key = auth_key(c);
  if (!key.ok()) return fail(key.status());
  auto versions = list_versions(**store);
  if (!versions.ok()) return fail(versions.status());
  json rows = json::array();
  for (uint64_t v : *versions) {
    auto m = read_manifest(**store, v, *key ? &**key : nullptr);
    if (!m.ok()) {
      rows.push_back({{"version", v}, {"error", m.status().to_string()}});
      continue;
    }
    const double density = m->elements ? static_cast<double>(m->changes) / static_cast<double>(m->elements) : 0.0;
    json row = {{"version", v},
                {"kind", m->has_anchor ? (m->base_version ? "anchor+delta" : "anchor") : "delta"},
                {"delta_bytes", m->bytes_of("delta")},
                {"anchor_bytes", m->bytes_of("anchor")},
                {"changes", m->changes},
                {"density", density},
                {"state_digest", m->state_digest},
                {"created", format_time(m->created_unix_ms)}};
    if (m->base_version) row["base_version"] = *m->base_version;
    if (m->step) row["step"] = *m->step;
    rows.push_back(row);
  }
  if (c.as_json) {
    std::cout << json{{"store", (*store)->describe()}, {"versions", rows}}.dump(2) << "\n";
    return kExitOk;
  }
  std::printf("%-8s %-13s %-6s %-8s %12s %12s %12s %9s  %-20s %s\n", "version", "kind", "base", "step", "delta", "anchor",
              "changes", "density", "created", "state");
  for (const auto& r : rows) {
    if (r.contains("error")) {
      std::printf("%-8llu error: %s\n", static_cast<unsigned long long>(r["version"].get<uint64_t>()), r["error"].get<std::string>().c_str());
      continue;
    }
    std::printf("%-8llu %-13s %-6s %-8s %12s %12s %12llu %8.4f%%  %-20s %s\n", static_cast<unsigned long long>(r["version"].get<uint64_t>()),
                r["kind"].get<std::string>().c_str(),
                r.contains("base_version") ? std::to_string(r["base_version"].get<uint64_t>()).c_str() : "-",
                r.contains("step") ? std::to_string(r["step"].get<uint64_t>()).c_str() : "-",
                r["delta_bytes"].get<uint64_t>() ? human_bytes(r["delta_bytes"].get<uint64_t>()).c_str() : "-",
                r["anchor_bytes"].get<uint64_t>() ? human_bytes(r["anchor_bytes"].get<uint64_t>()).c_str() : "-",
                static_cast<unsigned long long>(r["changes"].get<uint64_t>()), 100.0 * r["density"].get<double>(),
                r["created"].get<std::string>().c_str(), r["state_digest"].get<std::string>().c_str());
  }
  return kExitOk;
}

int cmd_fold(const SyncCommands& c, size_t threads, bool quiet) {
  auto store = open_cli_store(c, c.store, quiet);
  if (!store.ok()) return fail(store.status());
  auto key = auth_key(c);
  if (!key.ok()) return fail(key.status());
  CreatePatchOptions o;
  o.threads = threads;
  const auto t0 = std::chrono::steady_clock::now();
  auto r = fold(**store, c.fold_from, c.fold_to, std::filesystem::temp_directory_path().string(), o, *key ? &**key : nullptr);
  if (!r.ok()) return fail(r.status());
  if (!quiet) {
    std::printf("folded %llu -> %llu: %s, %llu changes (the deltas it replaces: %s) (%.2fs)\n",
                static_cast<unsigned long long>(r->from_version), static_cast<unsigned long long>(r->to_version),
                human_bytes(r->bytes).c_str(), static_cast<unsigned long long>(r->changes), human_bytes(r->chain_bytes).c_str(),
                seconds_since(t0));
  }
  return kExitOk;
}

int cmd_gc(const SyncCommands& c, bool quiet) {
  auto store = open_cli_store(c, c.store, quiet);
  if (!store.ok()) return fail(store.status());
  GcOptions o;
  o.keep_last = c.keep_last;
  o.pinned = c.pins;
  o.dry_run = c.dry_run;
  auto r = gc(**store, o);
  if (!r.ok()) return fail(r.status());
  if (!quiet) {
    std::printf("%s %zu version(s), %llu object(s), %s; %zu version(s) kept\n", c.dry_run ? "would delete" : "deleted",
                r->deleted_versions.size(), static_cast<unsigned long long>(r->deleted_objects),
                human_bytes(r->deleted_bytes).c_str(), r->kept_versions.size());
  }
  return kExitOk;
}

}  // namespace

bool looks_like_store(const std::string& path) {
  if (path.find("://") != std::string::npos) return true;
  std::error_code ec;
  return std::filesystem::is_directory(std::filesystem::path(path) / "versions", ec);
}

int verify_store_command(const SyncCommands& c, const std::string& uri, std::optional<uint64_t> version, bool full, size_t threads,
                         bool quiet) {
  auto store = open_cli_store(c, uri, quiet);
  if (!store.ok()) return fail(store.status());
  auto key = auth_key(c);
  if (!key.ok()) return fail(key.status());
  const auto t0 = std::chrono::steady_clock::now();
  auto r = verify_store(**store, version, full, threads, *key ? &**key : nullptr);
  ProgressLine::get().finish();
  if (!r.ok()) return fail(r.status());
  for (const auto& p : r->problems) std::fprintf(stderr, "dws: problem: %s\n", p.c_str());
  if (!r->ok()) {
    std::fprintf(stderr, "dws: error: E_TARGET_MISMATCH: %zu problem(s) in %s\n", r->problems.size(), (*store)->describe().c_str());
    return kExitMismatch;
  }
  if (!quiet) {
    std::printf("ok: store %s: %zu version(s) checked (manifests, object sizes and hashes, chain%s%s) (%.2fs)\n",
                (*store)->describe().c_str(), r->versions_checked.size(), full ? ", every version rebuilt and rescanned" : "",
                *key ? (", signatures by key " + (*key)->id()).c_str() : "", seconds_since(t0));
  }
  return kExitOk;
}

void add_store_options(CLI::App* command, SyncCommands& c) {
  command->add_option("--endpoint", c.endpoint,
                      "S3 endpoint URL, e.g. http://127.0.0.1:8333 (else $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, the profile's "
                      "endpoint_url, AWS)");
  command->add_option("--secret-file", c.secret_file,
                      "File holding the secret shared by publisher and receivers (16+ bytes, e.g. `openssl rand -hex 32`): "
                      "publish and fold sign versions with it; pull, log and verify take only versions signed with it "
                      "(else $DWS_SECRET_FILE; neither: unsigned). gc ignores it");
  command->add_option("--progress", c.progress, "Transfer progress on stderr: auto (when a terminal), on, off")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "on", "off"}));
}

void add_sync_commands(CLI::App& app, SyncCommands& c) {
  c.publish = app.add_subcommand("publish", "Publish CHECKPOINT as the next version in STORE");
  c.publish->add_option("STORE", c.store, "Store: a directory (local or shared filesystem) or s3://BUCKET[/PREFIX]")->required();
  c.publish->add_option("CHECKPOINT", c.checkpoint, "Checkpoint to publish (file or sharded directory)")->required();
  c.publish->add_option("--anchor-every", c.anchor_every, "Versions 0, N, 2N, ... also carry a full anchor (0: only version 0)")
      ->capture_default_str();
  c.publish->add_flag("--anchor", c.anchor,
                      "This version carries an anchor; a checkpoint that does not descend from the last version starts a new chain");
  c.publish->add_option("--snapshot", c.snapshot,
                        "Publisher's copy of the last published state, diffed against (default: ~/.cache/dws/publisher-<store id>)");
  c.publish->add_option("--encoding", c.encoding, "Delta encoding (as dws diff)")->capture_default_str();
  c.publish->add_option("--writer", c.writer,
                        "I/K: this is writer I (from 0) of K, publishing its own tensors as one file; the version commits "
                        "when all K parts are in");
  c.publish->add_option("--step", c.step,
                        "The trainer's step id, recorded in the version; publishing a step the latest version (or this "
                        "writer's pending part) already carries does nothing, so a rerun after a crash is safe");
  c.publish->add_option("--notify", c.notify_urls, "Receiver URL to poke after the commit, e.g. http://host:8765 (repeatable)");
  c.publish->add_option("--notify-token-file", c.token_file, "File holding the shared notification token (else $DWS_NOTIFY_TOKEN)");
  c.publish->add_option("--max-delta-density", c.max_delta_density,
                        "Above this fraction of changed elements the checkpoint is taken as not descending (needs --anchor)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));

  c.pull = app.add_subcommand("pull", "Bring LOCAL to a version of STORE (default: the latest)");
  c.pull->add_option("STORE", c.store, "Store: a directory or s3://BUCKET[/PREFIX]")->required();
  c.pull->add_option("LOCAL", c.checkpoint, "Local checkpoint (created from an anchor if missing)")->required();
  c.pull->add_option("--version", c.version, "Version to reach (default: the latest)");
  c.pull->add_flag("--follow", c.follow, "Keep pulling new versions as they appear (Ctrl-C to stop)");
  c.pull->add_flag("--audit", c.audit,
                   "Rescan the local checkpoint to identify its version instead of trusting the digests its sidecar "
                   "recorded (with --follow: on the first pull)");
  c.pull->add_option("--poll-interval", c.poll_seconds, "Seconds between store polls with --follow")->capture_default_str()
      ->check(CLI::Range(0.001, 3600.0));
  c.pull->add_option("--listen", c.listen,
                     "With --follow: HOST:PORT for publisher pokes (POST /v1/notify); loopback unless a token is set");
  c.pull->add_option("--notify-token-file", c.token_file, "File holding the shared notification token (else $DWS_NOTIFY_TOKEN)");

  c.fold = app.add_subcommand("fold", "Write one patch FROM -> TO for receivers that lag (pull uses it when cheaper)");
  c.fold->add_option("STORE", c.store, "Store: a directory or s3://BUCKET[/PREFIX]")->required();
  c.fold->add_option("--from", c.fold_from, "Version the fold starts at")->required();
  c.fold->add_option("--to", c.fold_to, "Version the fold ends at")->required();

  c.gc = app.add_subcommand("gc", "Retire versions no kept version needs");
  c.gc->add_option("STORE", c.store, "Store: a directory or s3://BUCKET[/PREFIX]")->required();
  c.gc->add_option("--keep-last", c.keep_last, "The newest N versions stay pullable (with the chain back to their anchor)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  c.gc->add_option("--pin", c.pins, "A version that stays pullable too (repeatable)");
  c.gc->add_flag("--dry-run", c.dry_run, "Say what would be deleted, delete nothing");

  c.log = app.add_subcommand("log", "List the versions in STORE");
  c.log->add_option("STORE", c.store, "Store: a directory or s3://BUCKET[/PREFIX]")->required();
  c.log->add_flag("--json", c.as_json, "Machine-readable output");

  for (CLI::App* command : {c.publish, c.pull, c.fold, c.gc, c.log}) add_store_options(command, c);
}

std::optional<int> run_sync_command(const SyncCommands& c, size_t threads, bool quiet) {
  if (c.publish && *c.publish) return cmd_publish(c, threads, quiet);
  if (c.pull && *c.pull) return cmd_pull(c, threads, quiet);
  if (c.log && *c.log) return cmd_log(c);
  if (c.fold && *c.fold) return cmd_fold(c, threads, quiet);
  if (c.gc && *c.gc) return cmd_gc(c, quiet);
  return std::nullopt;
}

}  // namespace dws::cli
