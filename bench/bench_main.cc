// dws_bench — sizes and speeds of the diff/encode and decode/apply paths, as ratios to memcpy of the
// same model bytes measured in the same run (the machine is shared and noisy; only ratios travel).
//
// Datasets: the reference trajectory (every consecutive pair) and a synthetic bf16 model of a given
// size with RL-like changes (0.4% of elements move by ±1 ULP). Speeds are medians over --runs runs.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "codec/codecs.h"
#include "codec/native.h"
#include "core/thread_pool.h"
#include "dws/checkpoint.h"
#include "dws/diff.h"
#include "dws/digest.h"
#include "dws/patch.h"
#include "dws/simulate.h"
#include "patch/patch_internal.h"
#include "bench_util.h"

namespace {

using json = nlohmann::json;
using namespace dws;
using bench::Case;
using bench::die;
using bench::make_simulated;
using bench::must;
using Clock = std::chrono::steady_clock;

int g_runs = 7;

// Median time of fn over g_runs runs after one warm-up; setup (untimed) runs before each.
double median_seconds(const std::function<void()>& fn, const std::function<void()>& setup = {}) {
  if (setup) setup();
  fn();  // warm-up: page faults, caches
  std::vector<double> t;
  for (int i = 0; i < g_runs; ++i) {
    if (setup) setup();
    auto t0 = Clock::now();
    fn();
    t.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// An encoding as the bench runs it: `class_positions` adds native's class layout (O(elements) decode).
struct Variant {
  Encoding encoding;
  bool class_positions = false;
  std::string label() const {
    return std::string(encoding_name(encoding)) + (class_positions ? "+class" : "");
  }
};

struct Row {
  std::string dataset, encoding;
  uint64_t changes = 0, elements = 0, model_bytes = 0, payload_bytes = 0, file_bytes = 0;
  double scan_ratio_1t = 0, scan_ratio_2t = 0;            // model bytes/s of the diff alone ÷ memcpy bytes/s
  double diff_ratio_1t = 0, diff_ratio_2t = 0;            // model bytes/s of diff+encode ÷ memcpy bytes/s
  double apply_time_ratio = 0;                             // decode+scatter time ÷ memcpy time of the model
  double apply_cli_in_place_ratio = 0;                     // whole in-place apply (verification included) ÷ memcpy
  double apply_known_digests_ratio = 0;                    // the same with the base digests known, as dws pull runs it
};

// diff + encode of every tensor, as create_patch does it minus digests and the file write.
void diff_and_encode(const Checkpoint& base, const Checkpoint& target, const Variant& v, size_t threads) {
  auto diffs = diff_checkpoints(base, target, threads);
  ThreadPool pool(threads);
  pool.parallel_for(diffs.size(), [&](size_t i) {
    const TensorDiff& d = diffs[i];
    if (d.change != TensorChange::kModified) return;
    auto e = codec::encode_tensor(v.encoding, {d.target->dtype, base.bytes(*d.base), target.bytes(*d.target), d.positions},
                                  d.target->shape, {1, v.class_positions});
    if (!e.ok()) die(e.status());
  });
}

Row measure(const Case& c, const Variant& v, const std::string& work, double memcpy_s, uint64_t model_bytes) {
  auto base = must(Checkpoint::open(c.base));
  auto target = must(Checkpoint::open(c.target));
  Row row;
  row.dataset = c.name;
  row.encoding = v.label();
  const std::string patch_path = work + "/bench.dwsp";
  auto stats = must(create_patch(base, target, patch_path, {v.encoding, 2, 1, v.class_positions}));
  row.changes = stats.changes;
  row.elements = stats.elements;
  row.model_bytes = model_bytes;
  row.payload_bytes = stats.payload_bytes;
  row.file_bytes = stats.patch_file_bytes;
  row.scan_ratio_1t = memcpy_s / median_seconds([&] { (void)diff_checkpoints(base, target, 1); });
  row.scan_ratio_2t = memcpy_s / median_seconds([&] { (void)diff_checkpoints(base, target, 2); });
  row.diff_ratio_1t = memcpy_s / median_seconds([&] { diff_and_encode(base, target, v, 1); });
  row.diff_ratio_2t = memcpy_s / median_seconds([&] { diff_and_encode(base, target, v, 2); });

  // decode + scatter into a buffer holding the base, decoding against that same buffer as an in-place
  // apply does (base values and the scatter share cache lines). The buffer is reset before each run.
  auto patch = must(Patch::open(patch_path));
  std::vector<std::vector<std::byte>> dst;
  std::vector<const CheckpointTensor*> bt;
  for (const PatchTensor& t : patch.header().tensors) {
    const CheckpointTensor* b = base.find(t.name);
    bt.push_back(b);
    auto bytes = base.bytes(*b);
    dst.emplace_back(bytes.begin(), bytes.end());
  }
  const double apply_s = median_seconds([&] {
    for (size_t i = 0; i < patch.header().tensors.size(); ++i) {
      const PatchTensor& t = patch.header().tensors[i];
      const size_t w = dtype_size_bytes(t.dtype);
      std::byte* out = dst[i].data();
      Status st = codec::decode_changes({t.encoding, t.dtype, t.numel(), t.changes, t.index_dtype}, payload_views(patch, t),
                                        dst[i], [&](std::span<const uint64_t> pos, std::span<const std::byte> v) {
                                          const std::byte* src = v.data();
                                          for (uint64_t p : pos) {
                                            std::memcpy(out + p * w, src, w);
                                            src += w;
                                          }
                                          return Status::Ok();
                                        });
      if (!st.ok()) die(st);
    }
  }, [&] {
    for (size_t i = 0; i < dst.size(); ++i) std::memcpy(dst[i].data(), base.bytes(*bt[i]).data(), dst[i].size());
  });
  row.apply_time_ratio = apply_s / memcpy_s;

  // The whole in-place apply as `dws apply --in-place` runs it: base digests, journal, replay, fsync;
  // then as `dws pull` runs it, with the base's tensor digests known (kept from the previous apply), so
  // nothing is rescanned. Each run patches a fresh copy; the copy is not timed.
  const std::string live = work + "/live.safetensors";
  const TensorDigests known = tensor_digests_by_name(base, tensor_digests(base, 1));
  auto in_place_seconds = [&](const TensorDigests* digests) {
    std::vector<double> times;
    for (int r = 0; r < std::max(3, g_runs / 2); ++r) {
      std::filesystem::copy_file(c.base, live, std::filesystem::copy_options::overwrite_existing);
      // Flush the copy (untimed), or the apply's fsync would pay for writing the whole copy back.
      if (int fd = ::open(live.c_str(), O_RDONLY); fd >= 0) {
        ::fsync(fd);
        ::close(fd);
      }
      ApplyOptions options{1, false, digests};
      auto t0 = Clock::now();
      must(apply_patch_in_place(live, patch, options));
      times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    }
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
  };
  row.apply_cli_in_place_ratio = in_place_seconds(nullptr) / memcpy_s;
  row.apply_known_digests_ratio = in_place_seconds(&known) / memcpy_s;
  return row;
}

// zstd --patch-from as the generic binary-diff baseline (same files, same run); 0 when zstd is absent.
// Level 19 as in DESIGN.md §4 for files up to 64 MiB; above that level 19 takes minutes per file, so
// level 3 is used and the row says so.
int zstd_baseline_level(const Case& c) { return std::filesystem::file_size(c.target) <= (64u << 20) ? 19 : 3; }

uint64_t zstd_patch_from_bytes(const Case& c, const std::string& work) {
  const std::string out = work + "/zstd.patch";
  const std::string cmd = "zstd -q -f -" + std::to_string(zstd_baseline_level(c)) + " --long=31 --patch-from='" + c.base +
                          "' '" + c.target + "' -o '" + out + "' 2>/dev/null";
  if (std::system(cmd.c_str()) != 0) return 0;
  return std::filesystem::file_size(out);
}

}  // namespace

namespace dws::bench {
int run_sync_latency(const std::string& data, const std::string& sims, const std::string& json_path);
int run_gpu_bench(const std::string& sims, int runs, const std::string& json_path);
}

int main(int argc, char** argv) {
  std::string data = "../shared/data/trajectory-small";
  std::string json_path = "bench/results/latest.json";
  // Default matrix (issue 3): a Qwen3-0.6B-shaped model at three learning rates (densities ~0.04%, 0.4%,
  // 4%) and a Llama-7B-shaped model cut to 2 layers (its tensor shapes, 0.66B parameters) at two.
  std::string sims = "qwen3-0.6b:0:1e-7,qwen3-0.6b:0:1e-6,qwen3-0.6b:0:1e-5,llama-7b:2:1e-6,llama-7b:2:1e-5";
  int trajectory_pairs = 8;
  bool sync_latency = false;
  std::string latency_sims = "qwen3-0.6b:0:1e-6:10";  // SHAPE:LAYERS:LR:STEPS
  bool gpu = false;
  std::string gpu_sims = "qwen3-0.6b:0:1e-6,qwen3-0.6b:0:1e-5";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) { std::fprintf(stderr, "dws_bench: %s needs a value\n", a.c_str()); std::exit(2); }
      return argv[++i];
    };
    if (a == "--data") data = next();
    else if (a == "--json") json_path = next();
    else if (a == "--sims") sims = next();
    else if (a == "--trajectory-pairs") trajectory_pairs = std::stoi(next());
    else if (a == "--quick") { sims = "tiny:0:1e-6"; trajectory_pairs = 2; g_runs = 3; }
    else if (a == "--runs") g_runs = std::stoi(next());
    else if (a == "--sync-latency") sync_latency = true;
    else if (a == "--latency-sims") latency_sims = next();
    else if (a == "--gpu") gpu = true;
    else if (a == "--gpu-sims") gpu_sims = next();
    else {
      std::fprintf(stderr,
                   "usage: dws_bench [--data DIR] [--trajectory-pairs N] [--sims SHAPE:LAYERS:LR,...] [--runs N]\n"
                   "                 [--json PATH] [--quick]\n"
                   "       dws_bench --sync-latency [--latency-sims SHAPE:LAYERS:LR:STEPS,...] [--json PATH]\n"
                   "       dws_bench --gpu [--gpu-sims SHAPE:LAYERS:LR,...] [--runs N] [--json PATH]\n"
                   "Prints a table and writes JSON; speeds are ratios to memcpy of the same bytes in this run.\n");
      return a == "--help" ? 0 : 2;
    }
  }
  if (gpu) {
    if (json_path == "bench/results/latest.json") json_path = "bench/results/gpu.json";
    return dws::bench::run_gpu_bench(gpu_sims, g_runs, json_path);
  }
  if (sync_latency) {
    if (json_path == "bench/results/latest.json") json_path = "bench/results/sync-latency.json";
    return dws::bench::run_sync_latency(data, latency_sims, json_path);
  }
  const std::string work = (std::filesystem::temp_directory_path() / ("dws-bench-" + std::to_string(::getpid()))).string();
  std::filesystem::create_directories(work);

  std::vector<Case> cases;
  for (int s = 0; s < std::min(trajectory_pairs, 8); ++s) {
    char a[32], b[32];
    std::snprintf(a, sizeof a, "/step%03d.safetensors", s);
    std::snprintf(b, sizeof b, "/step%03d.safetensors", s + 1);
    if (std::filesystem::exists(data + a) && std::filesystem::exists(data + b)) {
      cases.push_back({"trajectory-small " + std::to_string(s) + "->" + std::to_string(s + 1), data + a, data + b});
    }
  }
  for (const std::string& spec : bench::split(sims, ',')) {
    if (spec.empty()) continue;
    std::fprintf(stderr, "dws_bench: simulating %s\n", spec.c_str());
    cases.push_back(make_simulated(work, spec));
  }

  json out = json::object();
  out["runs"] = g_runs;
  out["rows"] = json::array();
  out["digests"] = json::array();
  std::printf("%-30s %-12s %9s %8s %9s %9s %8s %8s %8s %8s %9s %9s %9s\n", "dataset", "encoding", "changes", "density", "payB/chg",
              "fileB/chg", "scan 1t", "scan 2t", "d+e 1t", "d+e 2t", "apply", "inplace", "inpl+dig");
  std::printf("%-30s %-12s %9s %8s %9s %9s %8s %8s %8s %8s %9s %9s %9s\n", "", "", "", "", "", "", "x memcpy", "x memcpy", "x memcpy",
              "x memcpy", "t/memcpy", "t/memcpy", "t/memcpy");
  for (const Case& c : cases) {
    auto base = must(Checkpoint::open(c.base));
    const uint64_t model_bytes = base.total_tensor_bytes();
    std::vector<std::byte> src(model_bytes), dst(model_bytes);
    std::memset(src.data(), 1, src.size());
    std::memset(dst.data(), 2, dst.size());
    const double memcpy_s = median_seconds([&] { std::memcpy(dst.data(), src.data(), model_bytes); });
    {
      // Whole-model digests, one thread: the additive tensor digest (what audits and unverified applies
      // compute) and XXH3-128 (format v1's tensor digest), as throughput ratios to memcpy.
      const double tensor_digest_s = median_seconds([&] { (void)tensor_digests(base, 1); });
      const double xxh3_s = median_seconds([&] {
        for (const auto& t : base.tensors()) (void)digest_bytes(base.bytes(t));
      });
      std::printf("%-30s digest throughput x memcpy, 1 thread: tensor digest %.3f, XXH3-128 %.3f\n", c.name.c_str(),
                  memcpy_s / tensor_digest_s, memcpy_s / xxh3_s);
      out["digests"].push_back({{"dataset", c.name}, {"tensor_digest_throughput_vs_memcpy_1t", memcpy_s / tensor_digest_s},
                                {"xxh3_throughput_vs_memcpy_1t", memcpy_s / xxh3_s}});
    }
    {
      // The native encoder's two halves from a tracker's record (positions, base and target values), one
      // thread: the per-tensor half alone (models, rANS, layout: what stays on the host when a GPU computes the
      // per-change half, gpu::NativeEncoder) as a share of the whole encode_changes.
      auto target = must(Checkpoint::open(c.target));
      struct Tracked {
        DType dtype;
        uint64_t numel;
        std::vector<uint64_t> positions;
        std::vector<std::byte> base_values, target_values;
        codec::native::ChangeSymbols symbols;
      };
      std::vector<Tracked> tracked;
      for (TensorDiff& d : diff_checkpoints(base, target, 0)) {
        if (d.change != TensorChange::kModified) continue;
        Tracked t{d.base->dtype, d.base->numel(), std::move(d.positions), {}, {}, {}};
        const size_t w = dtype_size_bytes(t.dtype);
        const auto b = base.bytes(*d.base), g = target.bytes(*d.target);
        for (uint64_t p : t.positions) {
          t.base_values.insert(t.base_values.end(), b.begin() + p * w, b.begin() + (p + 1) * w);
          t.target_values.insert(t.target_values.end(), g.begin() + p * w, g.begin() + (p + 1) * w);
        }
        t.symbols = must(codec::native::symbolize_changes(t.dtype, t.numel, t.positions, t.base_values, t.target_values));
        tracked.push_back(std::move(t));
      }
      const double whole_s = median_seconds([&] {
        for (const Tracked& t : tracked) (void)must(codec::native::encode_changes(t.dtype, t.numel, t.positions, t.base_values, t.target_values));
      });
      const double finish_s = median_seconds([&] {
        for (const Tracked& t : tracked) (void)must(codec::native::encode_symbols(t.dtype, t.numel, t.symbols));
      });
      std::printf("%-30s native encode from tracked changes, 1 thread: per-tensor half %.3f of the whole (%.3f x memcpy of the model)\n",
                  c.name.c_str(), finish_s / whole_s, memcpy_s / whole_s);
      out["native_encode_split"].push_back({{"dataset", c.name}, {"per_tensor_half_time_vs_whole_encode", finish_s / whole_s},
                                            {"whole_encode_changes_throughput_vs_memcpy_1t", memcpy_s / whole_s}});
    }
    for (const Variant& v : {Variant{Encoding::kAuto}, Variant{Encoding::kNative}, Variant{Encoding::kNative, true},
                             Variant{Encoding::kIndices}, Variant{Encoding::kGaps}, Variant{Encoding::kGapsZstd},
                             Variant{Encoding::kXorZstd}}) {
      Row r = measure(c, v, work, memcpy_s, model_bytes);
      const double chg = static_cast<double>(std::max<uint64_t>(r.changes, 1));
      std::printf("%-30s %-12s %9llu %7.3f%% %9.2f %9.2f %8.3f %8.3f %8.3f %8.3f %9.3f %9.3f %9.3f\n", r.dataset.c_str(), r.encoding.c_str(),
                  static_cast<unsigned long long>(r.changes), 100.0 * static_cast<double>(r.changes) / static_cast<double>(r.elements),
                  static_cast<double>(r.payload_bytes) / chg, static_cast<double>(r.file_bytes) / chg, r.scan_ratio_1t,
                  r.scan_ratio_2t, r.diff_ratio_1t,
                  r.diff_ratio_2t, r.apply_time_ratio, r.apply_cli_in_place_ratio, r.apply_known_digests_ratio);
      out["rows"].push_back({{"dataset", r.dataset}, {"encoding", r.encoding}, {"changes", r.changes},
                             {"elements", r.elements}, {"model_bytes", r.model_bytes},
                             {"payload_bytes", r.payload_bytes}, {"file_bytes", r.file_bytes},
                             {"payload_bytes_per_change", static_cast<double>(r.payload_bytes) / chg},
                             {"file_bytes_per_change", static_cast<double>(r.file_bytes) / chg},
                             {"diff_throughput_vs_memcpy_1t", r.scan_ratio_1t},
                             {"diff_throughput_vs_memcpy_2t", r.scan_ratio_2t},
                             {"diff_encode_throughput_vs_memcpy_1t", r.diff_ratio_1t},
                             {"diff_encode_throughput_vs_memcpy_2t", r.diff_ratio_2t},
                             {"decode_apply_time_vs_memcpy", r.apply_time_ratio},
                             {"in_place_apply_time_vs_memcpy", r.apply_cli_in_place_ratio},
                             {"in_place_apply_known_digests_time_vs_memcpy", r.apply_known_digests_ratio},
                             {"memcpy_seconds", memcpy_s}});
      std::fflush(stdout);
    }
    if (uint64_t z = zstd_patch_from_bytes(c, work)) {
      const auto rows = out["rows"];
      const double chg = static_cast<double>(std::max<uint64_t>(rows.back()["changes"].get<uint64_t>(), 1));
      const std::string label = "zstd -" + std::to_string(zstd_baseline_level(c)) + " --long --patch-from";
      std::printf("%-30s %-30s %9.2f (whole file)\n", c.name.c_str(), label.c_str(), static_cast<double>(z) / chg);
      std::fflush(stdout);
      out["rows"].push_back({{"dataset", c.name}, {"encoding", label}, {"file_bytes", z},
                             {"file_bytes_per_change", static_cast<double>(z) / chg}});
    }
  }
  std::filesystem::remove_all(work);
  std::filesystem::create_directories(std::filesystem::path(json_path).parent_path().empty() ? "." : std::filesystem::path(json_path).parent_path());
  std::ofstream(json_path) << out.dump(2) << "\n";
  std::printf("\nJSON: %s\n", json_path.c_str());
  std::printf("scan 1t/2t: (model bytes / time of the exact diff) / (model bytes / time of memcpy), higher is better\n"
              "d+e 1t/2t: the same for diff + encode of every changed tensor\n"
              "apply: time of decode+scatter / time of one memcpy of the whole model, lower is better\n"
              "inplace: time of the whole crash-safe in-place apply (base digest, journal, fsync) / memcpy time\n"
              "inpl+dig: the same with the base's tensor digests known (as dws pull keeps them): O(changes) checks\n");
  return 0;
}
