// gpu_bench.cc — `dws_bench --gpu`: the GPU path on simulated models, as ratios to copies measured in the
// same run on the same device.
//
//   diff        Differ::diff over all tensors (both passes, the scan, the one host sync, output allocation)
//               vs one device-to-device copy of the model (the diff reads 2x the model, the copy reads and
//               writes it: the same bytes move)
//   diff        (the change set is refilled in place each run, as a trainer diffing every step would)
//   to host     copying only the changes to pinned host memory
//   scatter     apply_changes of the step into a device snapshot, vs the same copy
//   scatter 1%  the same for a synthetic step changing 1% of elements by one ULP
//   nccl        broadcast_changes of the step on this GPU, root to itself as a replica (the receiver's whole
//               pipeline: header, counts, buckets of 64 MiB or 4 MiB into two slots, scatter on arrival) vs the copy
//   patch apply apply_tensor of every tensor from a native patch file (host decode + upload + scatter) vs
//               uploading the whole checkpoint from host memory
//   track       DeviceChangeTracker::take of the step (the Python trainer's path for CUDA tensors: diff, changes
//               to host, changed words gathered, digests, snapshot scatter), time vs the copy
//   dev apply   apply_patch_to_device_tensors of the tracker's patch (the Python receiver's path: host decode,
//               word gather, digest check, upload, one scatter), time vs uploading the checkpoint
//   gpu enc     NativeEncoder::encode of the step (symbols on the device, models and rANS on the host), time vs
//               the CPU path from the same change set: to_host + codec::native::encode_changes per tensor; the
//               payloads must be equal. host B/chg: bytes the encoder copied to the host per change
// The columns above a failure stop the benchmark (die); a failure in track, dev apply or gpu enc (a call's error
// or a result that is not the target's) is printed to stderr, leaves NaN in its columns and makes the exit status 1.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "bench_util.h"
#include "codec/native.h"
#include "dws/checkpoint.h"
#include "dws/gpu.h"
#include "dws/gpu_broadcast.h"
#include "dws/patch.h"

namespace dws::bench {

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

double median_of(int runs, const std::function<void()>& fn, const std::function<void()>& setup = {}) {
  if (setup) setup();
  fn();  // warm-up
  std::vector<double> t;
  for (int i = 0; i < runs; ++i) {
    if (setup) setup();
    if (Status st = gpu::synchronize(nullptr); !st.ok()) die(st);
    const auto t0 = Clock::now();
    fn();
    if (Status st = gpu::synchronize(nullptr); !st.ok()) die(st);
    t.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

void check(const Status& st) {
  if (!st.ok()) die(st);
}

// Keeps the first failure of a section that reports failures instead of dying.
void keep_first(Status& first, Status st) {
  if (!st.ok() && first.ok()) first = std::move(st);
}

// All tensors of a checkpoint in one device allocation, each at a 256-byte-aligned offset.
struct DeviceModel {
  gpu::DeviceBuffer buffer;
  std::vector<gpu::DeviceTensor> tensors;
  uint64_t bytes = 0;  // tensor bytes (without alignment padding)
};

uint64_t padded_size(const Checkpoint& c) {
  uint64_t n = 0;
  for (const auto& t : c.tensors()) n += (c.bytes(t).size() + 255) / 256 * 256;
  return n;
}

DeviceModel upload_model(const Checkpoint& c, const std::vector<std::vector<std::byte>>* replace = nullptr) {
  DeviceModel m;
  m.buffer = must(gpu::DeviceBuffer::allocate(padded_size(c)));
  uint64_t at = 0;
  for (size_t i = 0; i < c.tensors().size(); ++i) {
    const CheckpointTensor& t = c.tensors()[i];
    std::span<const std::byte> bytes = c.bytes(t);
    if (replace) bytes = (*replace)[i];
    auto* p = static_cast<std::byte*>(m.buffer.data()) + at;
    check(gpu::copy(p, bytes.data(), bytes.size(), nullptr));
    m.tensors.push_back({p, t.dtype, bytes.size() / dtype_size_bytes(t.dtype)});
    at += (bytes.size() + 255) / 256 * 256;
    m.bytes += bytes.size();
  }
  return m;
}

std::vector<gpu::DiffInput> inputs_of(const DeviceModel& a, const DeviceModel& b) {
  std::vector<gpu::DiffInput> in;
  for (size_t i = 0; i < a.tensors.size(); ++i) in.push_back({a.tensors[i].data, b.tensors[i].data, a.tensors[i].dtype, a.tensors[i].numel});
  return in;
}

// The base's tensors with `density` of their elements moved by one unit in the last place.
std::vector<std::vector<std::byte>> one_ulp_step(const Checkpoint& c, double density, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::geometric_distribution<uint64_t> skip(density);
  std::vector<std::vector<std::byte>> out;
  for (const auto& t : c.tensors()) {
    auto bytes = c.bytes(t);
    out.emplace_back(bytes.begin(), bytes.end());
    const size_t w = dtype_size_bytes(t.dtype);
    const uint64_t n = bytes.size() / w;
    for (uint64_t i = skip(rng); i < n; i += 1 + skip(rng)) out.back()[i * w] ^= std::byte{1};  // low bit of the element
  }
  return out;
}

}  // namespace

int run_gpu_bench(const std::string& sims, int runs, const std::string& json_path) {
  if (!gpu::built_with_cuda()) die(make_error(ErrorCode::kUnsupported, "dws_bench --gpu: built without CUDA"));
  const int devices = must(gpu::device_count());
  if (devices == 0) die(make_error(ErrorCode::kNotFound, "dws_bench --gpu: no CUDA device"));
  const gpu::DeviceInfo info = must(gpu::device_info(0));
  std::printf("device: %s, %d SMs, %.1f GiB\n", info.name.c_str(), info.multiprocessors,
              static_cast<double>(info.memory_bytes) / (1ull << 30));
  const std::string work = (std::filesystem::temp_directory_path() / ("dws-gpu-bench-" + std::to_string(::getpid()))).string();
  std::filesystem::create_directories(work);

  json out = {{"device", info.name}, {"multiprocessors", info.multiprocessors}, {"runs", runs}, {"rows", json::array()}};
  std::printf("%-28s %8s %10s %9s %9s %9s %9s %9s %9s %10s %10s %9s %10s %10s %10s\n", "dataset", "density", "model MB", "diff", "to host",
              "scatter", "scat 1%", "nccl 64M", "nccl 4M", "patch app", "payB/chg", "track", "dev apply", "gpu enc", "host B/chg");
  std::printf("%-28s %8s %10s %9s %9s %9s %9s %9s %9s %10s %10s %9s %10s %10s %10s\n", "", "", "", "x copy", "t/copy", "t/copy", "t/copy",
              "t/copy", "t/copy", "t/upload", "", "t/copy", "t/upload", "t/cpu enc", "");
  bool failed = false;  // a section failed (reported on stderr; its columns NaN)
  for (const std::string& spec : split(sims, ',')) {
    if (spec.empty()) continue;
    std::fprintf(stderr, "dws_bench: simulating %s\n", spec.c_str());
    const Case c = make_simulated(work, spec);
    auto base = must(Checkpoint::open(c.base));
    auto target = must(Checkpoint::open(c.target));
    DeviceModel d_base = upload_model(base), d_target = upload_model(target);
    DeviceModel d_scratch = upload_model(base);
    const uint64_t model_bytes = d_base.bytes;

    // Baselines: one device copy of the model; one upload of it from host memory.
    const double copy_s = median_of(runs, [&] {
      check(gpu::copy(d_scratch.buffer.data(), d_base.buffer.data(), d_base.buffer.size_bytes(), nullptr));
    });
    std::vector<std::byte> host_model(d_base.buffer.size_bytes());
    const double upload_s = median_of(runs, [&] {
      check(gpu::copy(d_scratch.buffer.data(), host_model.data(), host_model.size(), nullptr));
    });

    gpu::Differ differ;
    const auto inputs = inputs_of(d_base, d_target);
    gpu::DeviceChangeSet changes;  // refilled every step, as a trainer would
    const double diff_s = median_of(runs, [&] { check(differ.diff(inputs, nullptr, changes)); });
    gpu::HostChangeSet host_changes;
    const double to_host_s = median_of(runs, [&] { check(gpu::Differ::to_host(changes, host_changes, nullptr)); });
    auto reset = [&] { check(gpu::copy(d_scratch.buffer.data(), d_base.buffer.data(), d_base.buffer.size_bytes(), nullptr)); };
    const double scatter_s = median_of(runs, [&] { check(gpu::apply_changes(d_scratch.tensors, changes, nullptr)); }, reset);

    // A synthetic 1% step (one ULP each), for the scatter target.
    const auto step1 = one_ulp_step(base, 0.01, 7);
    DeviceModel d_step1 = upload_model(base, &step1);
    const gpu::DeviceChangeSet changes1 = must(differ.diff(inputs_of(d_base, d_step1), nullptr));
    const double scatter1_s = median_of(runs, [&] { check(gpu::apply_changes(d_scratch.tensors, changes1, nullptr)); }, reset);

    // The NCCL transport on this one GPU: the root broadcasts the step's changes to itself as a replica,
    // which runs the whole receiver pipeline (header, counts, buckets into two slots, scatter on arrival).
    double nccl_s = 0, nccl_small_s = 0;
    uint64_t nccl_bytes = 0, nccl_buckets_small = 0;
    if (gpu::nccl_version().ok()) {
      const int device = 0;
      auto comms = must(gpu::Communicator::init_all({&device, 1}));
      auto run = [&](uint64_t bucket_bytes) {
        const auto st = must(gpu::broadcast_changes(comms[0], 0, &changes, d_scratch.tensors, {.bucket_bytes = bucket_bytes}));
        nccl_bytes = st.bytes;
        return st.buckets;
      };
      nccl_s = median_of(runs, [&] { (void)run(64ull << 20); }, reset);
      nccl_small_s = median_of(runs, [&] { nccl_buckets_small = run(4ull << 20); }, reset);
      for (size_t i = 0; i < target.tensors().size(); ++i) {  // the replica is the target, bit for bit
        auto want = target.bytes(target.tensors()[i]);
        std::vector<std::byte> have(want.size());
        check(gpu::copy(have.data(), d_scratch.tensors[i].data, want.size(), nullptr));
        if (std::memcmp(have.data(), want.data(), want.size()) != 0) {
          die(make_error(ErrorCode::kTargetMismatch, "nccl broadcast did not reproduce the target"));
        }
      }
    }

    // A receiver applying a native patch file into device tensors.
    const std::string patch_path = work + "/gpu.dwsp";
    const PatchStats ps = must(create_patch(base, target, patch_path, {.encoding = Encoding::kNative}));
    const Patch patch = must(Patch::open(patch_path));
    std::vector<std::pair<const PatchTensor*, gpu::DeviceTensor>> work_list;
    for (size_t i = 0; i < base.tensors().size(); ++i) {
      if (const PatchTensor* t = patch.header().find(base.tensors()[i].name)) work_list.push_back({t, d_scratch.tensors[i]});
    }
    const double patch_s = median_of(runs, [&] {
      for (const auto& [t, dst] : work_list) (void)must(gpu::apply_tensor(patch, *t, dst, nullptr));
    }, reset);
    // The result must be the target, bit for bit.
    bool exact = true;
    for (size_t i = 0; i < target.tensors().size(); ++i) {
      auto want = target.bytes(target.tensors()[i]);
      std::vector<std::byte> have(want.size());
      check(gpu::copy(have.data(), d_scratch.tensors[i].data, want.size(), nullptr));
      exact = exact && std::memcmp(have.data(), want.data(), want.size()) == 0;
    }
    if (!exact) die(make_error(ErrorCode::kTargetMismatch, "gpu patch apply did not reproduce the target"));

    // The sections below first ran on a device after the ones above had been measured there: a failure in one
    // is reported (stderr, exit status 1, NaN in its columns) without losing the figures of the others.
    const double nan = std::numeric_limits<double>::quiet_NaN();
    auto report_failure = [&](const char* section, const Status& st) {
      std::fprintf(stderr, "dws_bench --gpu: %s: %s: %s\n", c.name.c_str(), section, st.to_string().c_str());
      failed = true;
    };

    // The Python paths for CUDA tensors: the trainer's tracker and the receiver's checked apply.
    double track_s = nan, dev_apply_s = nan;
    {
      auto named = [&](const DeviceModel& m) {
        std::vector<gpu::NamedDeviceTensor> out;
        for (size_t i = 0; i < base.tensors().size(); ++i) {
          const CheckpointTensor& t = base.tensors()[i];
          out.push_back({t.name, t.dtype, t.shape, m.tensors[i].data});
        }
        return out;
      };
      const auto named_base = named(d_base), named_target = named(d_target), named_scratch = named(d_scratch);
      gpu::DeviceChangeTracker tracker;
      TensorDigests base_digests;
      std::vector<TrackedTensorChanges> tracked;
      Status st;  // the first failure of a timed call
      const double t_track = median_of(runs, [&] {
        auto r = tracker.take(named_target, nullptr);
        if (r.ok()) tracked = std::move(*r); else keep_first(st, r.status());
      }, [&] {
        auto r = tracker.reset(named_base, nullptr);
        if (r.ok()) base_digests = std::move(*r); else keep_first(st, r.status());
      });
      const std::string tracked_path = work + "/tracked.dwsp";
      if (st.ok()) keep_first(st, create_patch_from_changes(base.layout(), base_digests, tracked, tracked_path, {}).status());
      if (st.ok()) {
        track_s = t_track;
        const Patch tracked_patch = must(Patch::open(tracked_path));
        const double t_apply = median_of(runs, [&] {
          TensorDigests digests = base_digests;
          keep_first(st, gpu::apply_patch_to_device_tensors(tracked_patch, named_scratch, digests, nullptr).status());
        }, reset);
        for (size_t i = 0; st.ok() && i < target.tensors().size(); ++i) {
          auto want = target.bytes(target.tensors()[i]);
          std::vector<std::byte> have(want.size());
          check(gpu::copy(have.data(), d_scratch.tensors[i].data, want.size(), nullptr));
          if (std::memcmp(have.data(), want.data(), want.size()) != 0) {
            keep_first(st, make_error(ErrorCode::kTargetMismatch, "the device tracker's patch, applied on the device, did not reproduce tensor '" +
                                                                  target.tensors()[i].name + "' of the target"));
          }
        }
        if (st.ok()) dev_apply_s = t_apply;
      }
      if (!st.ok()) report_failure("device tracker / device apply", st);
    }

    // The native codec with its per-change half on the device, against the CPU encoder from the same changes.
    double gpu_encode_s = nan, cpu_encode_s = nan, encoder_host_bytes = nan;
    {
      std::vector<std::vector<std::byte>> gpu_payloads, cpu_payloads(changes.tensors.size());
      gpu::NativeEncoder encoder;
      Status st;
      const double t_gpu = median_of(runs, [&] {
        auto r = encoder.encode(changes, nullptr);
        if (r.ok()) gpu_payloads = std::move(*r); else keep_first(st, r.status());
      });
      cpu_encode_s = median_of(runs, [&] {
        check(gpu::Differ::to_host(changes, host_changes, nullptr));
        for (size_t t = 0; t < changes.tensors.size(); ++t) {
          const auto& e = changes.tensors[t];
          cpu_payloads[t] = must(codec::native::encode_changes(e.dtype, e.numel, host_changes.positions(t),
                                                               host_changes.base_values(t), host_changes.target_values(t)));
        }
      });
      if (st.ok() && gpu_payloads != cpu_payloads) {
        size_t t = 0;
        while (t < cpu_payloads.size() && t < gpu_payloads.size() && gpu_payloads[t] == cpu_payloads[t]) ++t;
        keep_first(st, make_error(ErrorCode::kInternal, "NativeEncoder's payload of tensor " + std::to_string(t) +
                                                  " differs from the CPU encoder's for the same changes"));
      }
      if (st.ok()) {
        gpu_encode_s = t_gpu;
        encoder_host_bytes = static_cast<double>(encoder.last_host_bytes()) / static_cast<double>(std::max<uint64_t>(changes.total, 1));
      } else {
        report_failure("native encoder", st);
      }
    }

    const double density = static_cast<double>(changes.total) /
                           static_cast<double>(model_bytes / dtype_size_bytes(base.tensors()[0].dtype));
    const double pay = static_cast<double>(ps.payload_bytes) / static_cast<double>(std::max<uint64_t>(ps.changes, 1));
    std::printf("%-28s %7.3f%% %10.1f %9.3f %9.3f %9.4f %9.4f %9.4f %9.4f %10.3f %10.3f %9.3f %10.3f %10.3f %10.2f\n", c.name.c_str(), 100 * density,
                static_cast<double>(model_bytes) / 1e6, copy_s / diff_s, to_host_s / copy_s, scatter_s / copy_s,
                scatter1_s / copy_s, nccl_s / copy_s, nccl_small_s / copy_s, patch_s / upload_s, pay, track_s / copy_s,
                dev_apply_s / upload_s, gpu_encode_s / cpu_encode_s, encoder_host_bytes);
    out["rows"].push_back({{"dataset", c.name},
                           {"tensors", base.tensors().size()},
                           {"model_bytes", model_bytes},
                           {"changes", changes.total},
                           {"density", density},
                           {"device_copy_seconds", copy_s},
                           {"host_upload_seconds", upload_s},
                           {"diff_throughput_vs_device_copy", copy_s / diff_s},
                           {"changes_to_host_time_vs_device_copy", to_host_s / copy_s},
                           {"scatter_time_vs_device_copy", scatter_s / copy_s},
                           {"scatter_1pct_changes", changes1.total},
                           {"scatter_1pct_time_vs_device_copy", scatter1_s / copy_s},
                           {"native_patch_apply_time_vs_host_upload", patch_s / upload_s},
                           {"nccl_broadcast_bytes", nccl_bytes},
                           {"nccl_broadcast_64MiB_buckets_time_vs_device_copy", nccl_s / copy_s},
                           {"nccl_broadcast_4MiB_buckets", nccl_buckets_small},
                           {"nccl_broadcast_4MiB_buckets_time_vs_device_copy", nccl_small_s / copy_s},
                           {"native_payload_bytes_per_change", pay},
                           {"patch_apply_bit_exact", exact},
                           {"device_tracker_take_time_vs_device_copy", track_s / copy_s},
                           {"device_patch_apply_time_vs_host_upload", dev_apply_s / upload_s},
                           {"gpu_native_encode_time_vs_cpu_encode", gpu_encode_s / cpu_encode_s},
                           {"gpu_native_encode_host_bytes_per_change", encoder_host_bytes}});
    std::fflush(stdout);
  }
  std::filesystem::remove_all(work);
  if (!json_path.empty()) {
    std::filesystem::create_directories(std::filesystem::path(json_path).parent_path());
    std::ofstream(json_path) << out.dump(2) << "\n";
  }
  return failed ? 1 : 0;
}

}  // namespace dws::bench
