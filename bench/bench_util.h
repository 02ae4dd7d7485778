// bench_util.h — what the benchmark programs share: fatal errors, simulated cases.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "dws/simulate.h"
#include "dws/status.h"

namespace dws::bench {

[[noreturn]] inline void die(const Status& st) {
  std::fprintf(stderr, "dws_bench: %s\n", st.to_string().c_str());
  std::exit(1);
}

template <typename T>
T must(Result<T> r) {
  if (!r.ok()) die(r.status());
  return std::move(r).value();
}

// "a,,b" split at `sep` -> {"a", "", "b"} (empty parts kept; "" -> {""}).
inline std::vector<std::string> split(const std::string& text, char sep) {
  std::vector<std::string> parts;
  for (size_t at = 0;;) {
    const size_t end = text.find(sep, at);
    parts.push_back(text.substr(at, end == std::string::npos ? std::string::npos : end - at));
    if (end == std::string::npos) return parts;
    at = end + 1;
  }
}

// One bench case: base/target checkpoints on disk.
struct Case {
  std::string name;
  std::string base, target;
};

// A simulated pair (step000 -> step001) from `dws simulate`: SHAPE:LAYERS:LR, LAYERS 0 = the shape's own.
inline Case make_simulated(const std::string& work, const std::string& spec) {
  const auto a = spec.find(':'), b = spec.rfind(':');
  if (a == std::string::npos || a == b) {
    std::fprintf(stderr, "dws_bench: --sims entry '%s' is not SHAPE:LAYERS:LR\n", spec.c_str());
    std::exit(2);
  }
  SimulateOptions o;
  o.shape = spec.substr(0, a);
  o.layers = static_cast<uint32_t>(std::stoul(spec.substr(a + 1, b - a - 1)));
  o.lr = std::stod(spec.substr(b + 1));
  o.steps = 1;
  const std::string dir = work + "/sim-" + std::to_string(std::hash<std::string>{}(spec));
  std::filesystem::create_directories(dir);
  auto stats = must(simulate_trajectory(dir, o));
  char name[96];
  std::snprintf(name, sizeof name, "%s %.2fB lr %g", o.shape.c_str(), static_cast<double>(stats.params) / 1e9, o.lr);
  return {name, dir + "/step000.safetensors", dir + "/step001.safetensors"};
}

}  // namespace dws::bench
