// dws — command-line frontend. Uses only the public headers in include/dws; maps library errors to the
// exit codes documented in docs/cli.md.
#include <CLI/CLI.hpp>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "dws/checkpoint.h"
#include "dws/patch.h"
#include "dws/safetensors.h"
#include "dws/simulate.h"
#include "cli_util.h"
#include "cmd_sync.h"

namespace {

using json = nlohmann::json;
using dws::ErrorCode;
using namespace dws::cli;

// A file is a patch when it is a safetensors file whose metadata says "dws.format": "dws-patch".
bool is_patch_file(const std::string& path) {
  auto f = dws::SafetensorsFile::open(path);
  if (!f.ok()) return false;
  auto it = f->header().metadata.find("dws.format");
  return it != f->header().metadata.end() && it->second == "dws-patch";
}

json shape_json(const std::vector<uint64_t>& shape) { return json(shape); }

// ---- diff ----

int cmd_diff(const std::string& base_path, const std::string& new_path, const std::string& out, const std::string& encoding,
             size_t threads, int zstd_level, bool class_positions, bool quiet) {
  auto enc = dws::encoding_from_name(encoding);
  if (!enc || *enc == dws::Encoding::kFull) {
    return fail(dws::make_error(ErrorCode::kInvalidArgument, "--encoding '" + encoding + "' is not one of auto, native, indices, gaps, gaps_zstd, xor_zstd"));
  }
  auto t0 = std::chrono::steady_clock::now();
  auto base = dws::Checkpoint::open(base_path);
  if (!base.ok()) return fail(base.status());
  auto target = dws::Checkpoint::open(new_path);
  if (!target.ok()) return fail(target.status());
  auto stats = dws::create_patch(*base, *target, out, {*enc, threads, zstd_level, class_positions});
  if (!stats.ok()) return fail(stats.status());
  if (!quiet) {
    const double density = stats->elements ? 100.0 * static_cast<double>(stats->changes) / static_cast<double>(stats->elements) : 0;
    auto per_change = [&](uint64_t bytes) {
      return stats->changes ? static_cast<double>(bytes) / static_cast<double>(stats->changes) : 0.0;
    };
    std::fprintf(stderr,
                 "dws diff: %s -> %s: %llu of %llu elements changed (%.3f%%) in %llu of %llu tensors; "
                 "patch %s (%s) = %.2f bytes/changed element (payload %.2f + metadata %.2f), %.3f%% of the %s checkpoint; %.2fs\n",
                 base_path.c_str(), out.c_str(), static_cast<unsigned long long>(stats->changes),
                 static_cast<unsigned long long>(stats->elements), density,
                 static_cast<unsigned long long>(stats->changed_tensors), static_cast<unsigned long long>(stats->tensors),
                 human_bytes(stats->patch_file_bytes).c_str(), encoding.c_str(), per_change(stats->patch_file_bytes),
                 per_change(stats->payload_bytes), per_change(stats->patch_file_bytes - stats->payload_bytes),
                 100.0 * static_cast<double>(stats->patch_file_bytes) / static_cast<double>(std::max<uint64_t>(stats->target_bytes, 1)),
                 human_bytes(stats->target_bytes).c_str(), seconds_since(t0));
  }
  return kExitOk;
}

// ---- apply ----

int cmd_apply(const std::vector<std::string>& args, const std::string& out, bool in_place, bool force, size_t threads,
              bool quiet) {
  if (args.size() != 2) return fail(dws::make_error(ErrorCode::kInvalidArgument, "apply needs CHECKPOINT PATCH"));
  if (in_place == !out.empty()) {
    return fail(dws::make_error(ErrorCode::kInvalidArgument, "apply needs exactly one of -o OUT or --in-place"));
  }
  auto t0 = std::chrono::steady_clock::now();
  auto patch = dws::Patch::open(args[1]);
  if (!patch.ok()) return fail(patch.status());
  dws::ApplyOptions options{threads, force};
  auto stats = in_place ? dws::apply_patch_in_place(args[0], *patch, options) : dws::apply_patch(args[0], *patch, out, options);
  if (!stats.ok()) return fail(stats.status());
  if (!quiet) {
    std::fprintf(stderr,
                 "dws apply: %s%s%s: %llu elements scattered into %llu tensors, %llu written whole, %llu removed%s; "
                 "state %s verified; %.2fs\n",
                 args[0].c_str(), in_place ? " (in place)" : " -> ", in_place ? "" : out.c_str(),
                 static_cast<unsigned long long>(stats->changes), static_cast<unsigned long long>(stats->tensors_patched),
                 static_cast<unsigned long long>(stats->tensors_written), static_cast<unsigned long long>(stats->tensors_removed),
                 stats->rewrote_files ? " (layout changed: files rewritten)" : "", stats->target_state_digest.c_str(),
                 seconds_since(t0));
  }
  return kExitOk;
}

// ---- inspect ----

int inspect_patch(const std::string& path, bool as_json) {
  auto patch = dws::Patch::open(path);
  if (!patch.ok()) return fail(patch.status());
  const dws::PatchHeader& h = patch->header();
  json tensors = json::array();
  uint64_t changes = 0, payload = 0;
  for (const dws::PatchTensor& t : h.tensors) {
    const double density = t.numel() ? static_cast<double>(t.changes) / static_cast<double>(t.numel()) : 0;
    tensors.push_back({{"name", t.name},
                       {"change", dws::tensor_change_name(t.change)},
                       {"encoding", dws::encoding_name(t.encoding)},
                       {"dtype", dws::dtype_name(t.dtype)},
                       {"shape", shape_json(t.shape)},
                       {"elements", t.numel()},
                       {"changes", t.changes},
                       {"density", density},
                       {"payload_bytes", t.payload_bytes()},
                       {"bytes_per_change", t.changes ? static_cast<double>(t.payload_bytes()) / static_cast<double>(t.changes) : 0.0}});
    changes += t.changes;
    payload += t.payload_bytes();
  }
  json removed = json::array();
  for (const auto& r : h.removed) removed.push_back(r.name);
  const double per_change = changes ? static_cast<double>(patch->file_size_bytes()) / static_cast<double>(changes) : 0;
  json doc = {{"kind", "patch"},
              {"path", path},
              {"format_version", h.format_version},
              {"encoding", dws::encoding_name(h.encoding)},
              {"base_state_digest", dws::digest_hex(h.base_state_digest)},
              {"target_state_digest", dws::digest_hex(h.target_state_digest)},
              {"file_bytes", patch->file_size_bytes()},
              {"payload_bytes", payload},
              {"changes", changes},
              {"bytes_per_change", per_change},
              {"tensors", tensors},
              {"removed", removed}};
  if (as_json) {
    std::cout << doc.dump(2) << "\n";
    return kExitOk;
  }
  std::printf("patch %s: format v%u, encoding %s, %s, %llu changes, %.2f bytes per changed element\n", path.c_str(),
              h.format_version, std::string(dws::encoding_name(h.encoding)).c_str(), human_bytes(patch->file_size_bytes()).c_str(),
              static_cast<unsigned long long>(changes), per_change);
  std::printf("base state %s -> target state %s\n", dws::digest_hex(h.base_state_digest).c_str(),
              dws::digest_hex(h.target_state_digest).c_str());
  std::printf("%-48s %-9s %-9s %-6s %12s %10s %9s %12s %8s\n", "tensor", "change", "encoding", "dtype", "elements", "changes",
              "density", "bytes", "B/chg");
  for (const auto& t : tensors) {
    std::printf("%-48s %-9s %-9s %-6s %12llu %10llu %8.4f%% %12llu %8.2f\n", t["name"].get<std::string>().c_str(),
                t["change"].get<std::string>().c_str(), t["encoding"].get<std::string>().c_str(),
                t["dtype"].get<std::string>().c_str(), static_cast<unsigned long long>(t["elements"].get<uint64_t>()),
                static_cast<unsigned long long>(t["changes"].get<uint64_t>()), 100.0 * t["density"].get<double>(),
                static_cast<unsigned long long>(t["payload_bytes"].get<uint64_t>()), t["bytes_per_change"].get<double>());
  }
  for (const auto& r : h.removed) std::printf("%-48s removed\n", r.name.c_str());
  return kExitOk;
}

int inspect_checkpoint(const std::string& path, bool as_json) {
  auto ck = dws::Checkpoint::open(path);
  if (!ck.ok()) return fail(ck.status());
  json tensors = json::array();
  for (const auto& t : ck->tensors()) {
    tensors.push_back({{"name", t.name},
                       {"dtype", dws::dtype_name(t.dtype)},
                       {"shape", shape_json(t.shape)},
                       {"bytes", t.size_bytes()},
                       {"shard", ck->layout().shards[t.shard].file}});
  }
  json doc = {{"kind", "checkpoint"},
              {"path", path},
              {"directory", ck->is_directory()},
              {"shards", ck->shard_count()},
              {"tensor_bytes", ck->total_tensor_bytes()},
              {"tensors", tensors}};
  if (as_json) {
    std::cout << doc.dump(2) << "\n";
    return kExitOk;
  }
  std::printf("checkpoint %s: %zu tensors in %zu file(s), %s of tensor data\n", path.c_str(), ck->tensors().size(),
              ck->shard_count(), human_bytes(ck->total_tensor_bytes()).c_str());
  std::printf("%-56s %-7s %-20s %12s\n", "tensor", "dtype", "shape", "bytes");
  for (const auto& t : ck->tensors()) {
    std::printf("%-56s %-7s %-20s %12llu\n", t.name.c_str(), std::string(dws::dtype_name(t.dtype)).c_str(),
                dws::shape_string(t.shape).c_str(), static_cast<unsigned long long>(t.size_bytes()));
  }
  return kExitOk;
}

// ---- verify ----

int cmd_verify(const std::string& path, size_t threads, bool quiet) {
  auto t0 = std::chrono::steady_clock::now();
  if (is_patch_file(path)) {
    auto patch = dws::Patch::open(path);
    if (!patch.ok()) return fail(patch.status());
    if (dws::Status st = patch->verify(threads); !st.ok()) return fail(st.with_context("verify '" + path + "'"));
    if (!quiet) {
      std::printf("ok: patch %s: %zu tensors, payload hashes and positions valid; base state %s -> target state %s (%.2fs)\n",
                  path.c_str(), patch->header().tensors.size(), dws::digest_hex(patch->header().base_state_digest).c_str(),
                  dws::digest_hex(patch->header().target_state_digest).c_str(), seconds_since(t0));
    }
    return kExitOk;
  }
  auto ck = dws::Checkpoint::open(path);
  if (!ck.ok()) return fail(ck.status());
  // Reading every byte (to hash it) proves the data section is present and readable.
  auto digests = dws::tensor_digests(*ck, threads);
  auto state = dws::state_digest(digests);
  if (!quiet) {
    std::printf("ok: checkpoint %s: %zu tensors, %s, state digest %s (%.2fs)\n", path.c_str(), ck->tensors().size(),
                human_bytes(ck->total_tensor_bytes()).c_str(), dws::digest_hex(state).c_str(), seconds_since(t0));
  }
  return kExitOk;
}

int cmd_recover(const std::string& path, bool quiet) {
  auto r = dws::recover_checkpoint(path);
  if (!r.ok()) return fail(r.status());
  if (!quiet) {
    if (r->had_journal) {
      std::printf("recovered %s: replayed %llu journal records (%llu elements); the checkpoint is at the patch's target\n",
                  path.c_str(), static_cast<unsigned long long>(r->records), static_cast<unsigned long long>(r->changes));
    } else {
      std::printf("%s: no interrupted apply; nothing to do\n", path.c_str());
    }
  }
  return kExitOk;
}

int cmd_simulate(const std::string& dir, const std::string& params, dws::SimulateOptions options, const std::string& dtype,
                 bool quiet) {
  if (!params.empty()) {
    auto n = dws::parse_count(params);
    if (!n) return fail(dws::make_error(ErrorCode::kInvalidArgument, "--params '" + params + "' is not a count like 600M or 7B"));
    options.params = *n;
  }
  auto dt = dws::dtype_from_name(dtype);
  if (!dt) return fail(dws::make_error(ErrorCode::kInvalidArgument, "--dtype '" + dtype + "' is not a safetensors dtype"));
  options.dtype = *dt;
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return fail(dws::make_error(ErrorCode::kIo, "create directory '" + dir + "': " + ec.message()));
  const bool tty = !quiet && ::isatty(2);
  auto t0 = std::chrono::steady_clock::now();
  if (tty) {
    options.progress = [&, last = -1](uint64_t done, uint64_t total) mutable {
      const int pct = total ? static_cast<int>(100 * done / total) : 100;
      if (pct == last) return;
      last = pct;
      std::fprintf(stderr, "\rdws simulate: %3d%% (%.1fs)", pct, seconds_since(t0));
    };
  }
  auto stats = dws::simulate_trajectory(dir, options);
  if (tty) std::fprintf(stderr, "\n");
  if (!stats.ok()) return fail(stats.status());
  if (!quiet) {
    std::fprintf(stderr, "dws simulate: %s: %u+1 checkpoints of %llu params (%llu tensors, %u layers, %s %s each), lr %g; %.1fs\n",
                 dir.c_str(), options.steps, static_cast<unsigned long long>(stats->params),
                 static_cast<unsigned long long>(stats->tensors), stats->layers, dtype.c_str(),
                 human_bytes(stats->checkpoint_bytes).c_str(), options.lr, seconds_since(t0));
  }
  return kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"dws — delta weight sync: exact, compact patches between model checkpoints"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "dws 0.1.0 (patch format v1)");
  size_t threads = 0;
  bool quiet = false;
  app.add_option("--threads", threads, "Worker threads for diff, hashing and encoding (0 = all cores)")->capture_default_str();
  app.add_flag("-q,--quiet", quiet, "Print nothing on success");

  std::string base, target, out, encoding = "auto";
  int zstd_level = 1;
  bool class_positions = false;
  auto* diff = app.add_subcommand("diff", "Write a patch that turns BASE into NEW");
  diff->add_option("BASE", base, "Base checkpoint: a .safetensors file or a sharded directory")->required();
  diff->add_option("NEW", target, "New checkpoint, same forms")->required();
  diff->add_option("-o,--output", out, "Patch file to write (replaced atomically if it exists)")->required();
  diff->add_option("--encoding", encoding, "auto (per tensor the smallest of native, xor_zstd, full) | native | indices | gaps | gaps_zstd | xor_zstd")->capture_default_str();
  diff->add_option("--zstd-level", zstd_level, "zstd level for gaps_zstd and xor_zstd")->capture_default_str()->check(CLI::Range(-7, 22));
  diff->add_flag("--class-positions", class_positions,
                 "native: also code positions per class of the base value (~25% smaller on AdamW steps; encoding and "
                 "every apply then scan whole base tensors instead of touching only the changes)");
  diff->add_option("--threads", threads, "Worker threads (0 = all cores)");

  std::vector<std::string> apply_args;
  bool in_place = false, force = false;
  auto* apply = app.add_subcommand("apply", "Apply PATCH to CHECKPOINT, into OUT or in place");
  apply->add_option("CHECKPOINT PATCH", apply_args, "Base checkpoint and patch file")->expected(2)->required();
  apply->add_option("-o,--output", out, "Output checkpoint (file, or directory for a sharded target); must not exist unless --force");
  apply->add_flag("--in-place", in_place, "Patch CHECKPOINT itself, crash-safely (journaled)");
  apply->add_flag("--force", force, "Replace an existing OUT");
  apply->add_option("--threads", threads, "Worker threads (0 = all cores)");

  std::string file;
  bool as_json = false;
  auto* inspect = app.add_subcommand("inspect", "Describe a checkpoint or a patch");
  inspect->add_option("FILE", file, "Checkpoint (file or directory) or patch")->required();
  inspect->add_flag("--json", as_json, "Machine-readable output");

  std::optional<uint64_t> verify_version;
  bool verify_full = false;
  auto* verify = app.add_subcommand("verify", "Full structural and hash check of a checkpoint, a patch or a store");
  verify->add_option("FILE", file, "Checkpoint (file or directory), patch, or store (a directory holding versions/)")->required();
  verify->add_option("--version", verify_version, "Store: check only this version");
  verify->add_flag("--full", verify_full, "Store: also rebuild every version and rescan its state digest");
  verify->add_option("--threads", threads, "Worker threads (0 = all cores)");

  auto* recover = app.add_subcommand("recover", "Finish an in-place apply interrupted by a crash");
  recover->add_option("CHECKPOINT", file, "Checkpoint given to 'apply --in-place'")->required();

  dws::SimulateOptions sim;
  std::string sim_params, sim_dtype = "BF16", sim_dir;
  auto* simulate = app.add_subcommand("simulate", "Write a synthetic AdamW training trajectory (step000 .. stepN)");
  simulate->add_option("-o,--output", sim_dir, "Directory to write (created if missing)")->required();
  simulate->add_option("--params", sim_params, "Target parameter count, e.g. 600M, 7B (layers are chosen to approach it)");
  simulate->add_option("--shape", sim.shape, "qwen3-0.6b | llama-7b | tiny | auto (by --params)")->capture_default_str();
  simulate->add_option("--layers", sim.layers, "Layer count (overrides --params)");
  simulate->add_option("--steps", sim.steps, "Optimizer steps after step000")->capture_default_str();
  simulate->add_option("--lr", sim.lr, "Learning rate")->capture_default_str();
  simulate->add_option("--dtype", sim_dtype, "Copy dtype: BF16, F16, F32, F8_E4M3, F8_E5M2")->capture_default_str();
  simulate->add_option("--seed", sim.seed, "Random seed (same seed, same bytes)")->capture_default_str();
  simulate->add_option("--threads", threads, "Worker threads (0 = all cores)");

  dws::cli::SyncCommands sync;
  dws::cli::add_sync_commands(app, sync);
  dws::cli::add_store_options(verify, sync);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? kExitOk : kExitUsage;
  }
  if (*diff) return cmd_diff(base, target, out, encoding, threads, zstd_level, class_positions, quiet);
  if (*apply) return cmd_apply(apply_args, out, in_place, force, threads, quiet);
  if (*inspect) return is_patch_file(file) ? inspect_patch(file, as_json) : inspect_checkpoint(file, as_json);
  if (*verify) {
    if (dws::cli::looks_like_store(file)) return dws::cli::verify_store_command(sync, file, verify_version, verify_full, threads, quiet);
    return cmd_verify(file, threads, quiet);
  }
  if (auto rc = dws::cli::run_sync_command(sync, threads, quiet)) return *rc;
  if (*recover) return cmd_recover(file, quiet);
  if (*simulate) {
    sim.threads = threads;
    return cmd_simulate(sim_dir, sim_params, sim, sim_dtype, quiet);
  }
  return kExitUsage;
}
