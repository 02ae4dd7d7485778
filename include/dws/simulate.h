// dws/simulate.h — synthetic training trajectories with realistic change statistics.
//
// Each element has an fp32 master weight (drawn from a per-tensor magnitude distribution like a trained
// transformer's: linear and embedding weights N(0, 0.02²), norm weights 1 + N(0, 0.01²), biases
// N(0, 0.006²)) and AdamW state near steady state (v remembering larger warm-up gradients: current
// gradient RMS = 0.4 √v, calibrated so trajectory-small's density is reproduced at its lr). Every step
// draws an iid N(0, s_t²) gradient per element, s_t a log-normal per-tensor scale (σ = 0.5),
// updates m and v (β1 = 0.9, β2 = 0.999, ε = 1e-8, weight decay 0.01) and moves the master weight by
// lr · m / (√v + ε). Step k's checkpoint is the master weights rounded (to nearest even) to the copy
// dtype. As in real training, an element's copy changes when its master weight crosses a rounding
// boundary, so small weights change more often. Generation streams over fixed-size chunks (memory is
// O(threads × chunk), not O(model)), in parallel, and is deterministic for a given seed.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "dws/dtype.h"
#include "dws/status.h"

namespace dws {

struct SimulateOptions {
  uint64_t params = 0;             // target parameter count; layers are chosen to approach it
  std::string shape = "auto";      // "qwen3-0.6b", "llama-7b", "tiny", or "auto" (by params)
  uint32_t layers = 0;             // overrides the layer count when non-zero
  uint32_t steps = 4;              // writes steps + 1 checkpoints: step000 .. stepNNN
  double lr = 1e-6;
  DType dtype = DType::kBF16;      // BF16, F16, F32, F8_E4M3 or F8_E5M2
  uint64_t seed = 1;
  size_t threads = 0;              // 0: all cores
  // Called from worker threads (one call at a time) as chunks finish, with elements done and total.
  std::function<void(uint64_t done, uint64_t total)> progress;
};

struct SimulateStats {
  uint64_t params = 0;
  uint32_t layers = 0;
  uint64_t tensors = 0;
  uint64_t checkpoint_bytes = 0;  // one step's file
};

// Writes DIR/step000.safetensors .. DIR/step<steps>.safetensors (each atomically). DIR must exist.
Result<SimulateStats> simulate_trajectory(const std::string& dir, const SimulateOptions& options);

// Rounds an fp32 value to the nearest (ties to even) value of a float dtype and returns its bits.
// F8_E4M3 (the "fn" variant: no infinities) saturates to ±448; the others overflow to ±inf.
uint64_t round_float_to(DType dtype, float value);

// "600M", "7B", "1.5e9", "123456" -> count; nullopt when unparsable.
std::optional<uint64_t> parse_count(const std::string& text);

}  // namespace dws
