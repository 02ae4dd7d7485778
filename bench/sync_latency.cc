// dws_bench --sync-latency: time from `publish` returning to a following receiver having applied the
// version, with and without the HTTP poke, against the time the receiver needs to pull (read and apply)
// that version alone. Medians over the versions of each trajectory.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <unistd.h>
#include <map>
#include <mutex>
#include <random>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.h"
#include "dws/notify.h"
#include "dws/simulate.h"
#include "dws/sync.h"

namespace dws::bench {

namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

template <typename T>
T must(Result<T> r, const char* what) {
  if (!r.ok()) {
    std::fprintf(stderr, "dws_bench: %s: %s\n", what, r.status().to_string().c_str());
    std::exit(1);
  }
  return std::move(r).value();
}

struct LatencyRow {
  std::string dataset, mode;
  double publish_s = 0;       // median time of publish()
  double latency_s = 0;       // median: publish returned -> follower applied
  double from_start_s = 0;    // median: publish called -> follower applied
  double pull_alone_s = 0;    // median: one pull of one version by itself
};

// Publishes steps[0..] into a fresh store with a follower running; returns per-version latencies.
LatencyRow run_mode(const std::string& work, const std::string& dataset, const std::vector<std::string>& steps, bool poke,
                    double poll_seconds) {
  const std::string dir = work + "/lat-" + (poke ? std::string("poke") : std::string("poll"));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  auto store = must(open_store(dir + "/store"), "open store");
  PublishOptions po;
  po.snapshot_path = dir + "/snapshot";
  po.anchor_every = 0;
  must(publish(*store, steps[0], po), "publish version 0");

  std::unique_ptr<NotifyListener> listener;
  if (poke) {
    listener = must(NotifyListener::start("127.0.0.1:0", ""), "listen");
    po.notify_urls = {"http://127.0.0.1:" + std::to_string(listener->port())};
  }
  std::mutex mu;
  std::condition_variable cv;
  std::map<uint64_t, Clock::time_point> applied_at;
  std::atomic<bool> stop{false};
  FollowOptions fo;
  fo.poll_seconds = poll_seconds;
  fo.listener = listener.get();
  fo.keep_going = [&] { return !stop.load(); };
  fo.on_pull = [&](const PullResult& r) {
    std::lock_guard<std::mutex> lock(mu);
    applied_at[r.version] = Clock::now();
    cv.notify_all();
  };
  Status follow_status;
  std::thread follower([&] { follow_status = follow(*store, dir + "/receiver", fo); });
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait_for(lock, std::chrono::seconds(600), [&] { return applied_at.count(0) > 0; });
  }
  std::vector<double> publish_times, latencies, from_start;
  // A random pause before each publish, so that the follower's poll phase is not locked to the
  // publisher's (a publish right after the follower's last poll would always wait a whole interval).
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> pause(0.0, poll_seconds);
  for (size_t s = 1; s < steps.size(); ++s) {
    std::this_thread::sleep_for(std::chrono::duration<double>(pause(rng)));
    const auto t0 = Clock::now();
    auto r = must(publish(*store, steps[s], po), "publish");
    const auto t1 = Clock::now();
    publish_times.push_back(std::chrono::duration<double>(t1 - t0).count());
    std::unique_lock<std::mutex> lock(mu);
    cv.wait_for(lock, std::chrono::seconds(600), [&] { return applied_at.count(r.version) > 0; });
    latencies.push_back(std::chrono::duration<double>(applied_at[r.version] - t1).count());
    from_start.push_back(std::chrono::duration<double>(applied_at[r.version] - t0).count());
  }
  stop = true;
  if (listener) (void)notify_receivers(po.notify_urls, 0, "", 5);
  follower.join();
  if (!follow_status.ok()) {
    std::fprintf(stderr, "dws_bench: follower: %s\n", follow_status.to_string().c_str());
    std::exit(1);
  }
  // The receiver's work alone: pull each version from the previous one, nothing else running.
  std::vector<double> alone;
  const std::string solo = dir + "/solo";
  PullOptions pl;
  pl.version = 0;
  must(pull(*store, solo, pl), "pull version 0");
  for (size_t v = 1; v < steps.size(); ++v) {
    pl.version = v;
    const auto t0 = Clock::now();
    must(pull(*store, solo, pl), "pull");
    alone.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  std::filesystem::remove_all(dir);
  LatencyRow row;
  row.dataset = dataset;
  row.mode = poke ? "poke" : "poll " + std::to_string(poll_seconds).substr(0, 4) + "s";
  row.publish_s = median(publish_times);
  row.latency_s = median(latencies);
  row.from_start_s = median(from_start);
  row.pull_alone_s = median(alone);
  return row;
}

}  // namespace

int run_sync_latency(const std::string& data, const std::string& sims, const std::string& json_path) {
  const std::string work = (std::filesystem::temp_directory_path() / ("dws-latency-" + std::to_string(::getpid()))).string();
  std::filesystem::create_directories(work);
  std::vector<std::pair<std::string, std::vector<std::string>>> datasets;
  {
    std::vector<std::string> steps;
    for (int s = 0; s <= 8; ++s) {
      char name[48];
      std::snprintf(name, sizeof name, "/step%03d.safetensors", s);
      if (std::filesystem::exists(data + name)) steps.push_back(data + name);
    }
    if (steps.size() >= 2) datasets.push_back({"trajectory-small", steps});
  }
  for (const std::string& spec : split(sims, ',')) {
    if (spec.empty()) continue;
    const std::vector<std::string> parts = split(spec, ':');  // SHAPE:LAYERS:LR:STEPS
    if (parts.size() != 4) {
      std::fprintf(stderr, "dws_bench: --latency-sims entry '%s' is not SHAPE:LAYERS:LR:STEPS\n", spec.c_str());
      return 2;
    }
    SimulateOptions o;
    o.shape = parts[0];
    o.layers = static_cast<uint32_t>(std::stoul(parts[1]));
    o.lr = std::stod(parts[2]);
    o.steps = static_cast<uint32_t>(std::stoul(parts[3]));
    const std::string dir = work + "/sim";
    std::filesystem::create_directories(dir);
    std::fprintf(stderr, "dws_bench: simulating %s\n", spec.c_str());
    auto stats = must(simulate_trajectory(dir, o), "simulate");
    std::vector<std::string> steps;
    for (uint32_t s = 0; s <= o.steps; ++s) {
      char name[48];
      std::snprintf(name, sizeof name, "/step%03u.safetensors", s);
      steps.push_back(dir + name);
    }
    char label[96];
    std::snprintf(label, sizeof label, "%s %.2fB lr %g", o.shape.c_str(), static_cast<double>(stats.params) / 1e9, o.lr);
    datasets.push_back({label, steps});
  }
  nlohmann::json rows = nlohmann::json::array();
  std::printf("%-28s %-10s %10s %12s %12s %14s %10s\n", "dataset", "mode", "publish s", "latency s", "from start s", "pull alone s",
              "latency/alone");
  for (const auto& [name, steps] : datasets) {
    for (bool poke : {true, false}) {
      LatencyRow r = run_mode(work, name, steps, poke, 1.0);
      std::printf("%-28s %-10s %10.4f %12.4f %12.4f %14.4f %10.2f\n", r.dataset.c_str(), r.mode.c_str(), r.publish_s, r.latency_s,
                  r.from_start_s, r.pull_alone_s, r.pull_alone_s > 0 ? r.latency_s / r.pull_alone_s : 0.0);
      std::fflush(stdout);
      rows.push_back({{"dataset", r.dataset}, {"mode", r.mode}, {"versions", steps.size() - 1}, {"publish_seconds", r.publish_s},
                      {"latency_seconds", r.latency_s}, {"publish_start_to_applied_seconds", r.from_start_s}, {"pull_alone_seconds", r.pull_alone_s},
                      {"latency_over_pull_alone", r.pull_alone_s > 0 ? r.latency_s / r.pull_alone_s : 0.0}});
    }
  }
  std::filesystem::remove_all(work);
  std::filesystem::create_directories(std::filesystem::path(json_path).parent_path().empty() ? "." : std::filesystem::path(json_path).parent_path());
  std::ofstream(json_path) << nlohmann::json{{"sync_latency", rows}}.dump(2) << "\n";
  std::printf("\nlatency: median time from publish() returning to the follower having applied the version (negative:\n"
              "  the poke goes out at the commit, before publish() updates its own snapshot and returns)\n"
              "from start: median time from publish() being called to the follower having applied the version\n"
              "pull alone: median time of one pull (download + apply) of one version with nothing else running\n"
              "JSON: %s\n", json_path.c_str());
  return 0;
}

}  // namespace dws::bench
