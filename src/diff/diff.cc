// Exact diff. The scan is memory-bound: it reads both buffers once in 64-byte blocks, skips blocks whose
// XOR is zero (most of them at RL densities), and only inspects elements inside changed blocks. Work is
// split into fixed-size chunks across all tensors so one large tensor still uses every thread.
#include "dws/diff.h"

#include <algorithm>
#include <cstring>

#include "core/thread_pool.h"

namespace dws {

namespace {

constexpr size_t kBlockBytes = 64;
constexpr size_t kChunkBytes = 1u << 20;  // per task

inline uint64_t load_u64(const std::byte* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

// For a word of XORed elements of W bytes: the top bit of every lane that is non-zero, others clear.
template <size_t W>
inline uint64_t lane_flags(uint64_t x) {
  if constexpr (W == 8) {
    return x ? 1ull << 63 : 0;
  } else {
    constexpr uint64_t kHigh = [] {  // top bit of each W-byte lane
      uint64_t m = 0;
      for (size_t lane = 0; lane < 8 / W; ++lane) m |= 1ull << (8 * W * (lane + 1) - 1);
      return m;
    }();
    // (x & ~kHigh) + ~kHigh sets a lane's top bit iff its low bits are non-zero (no carry across lanes);
    // OR with x itself catches lanes whose only set bit is the top one.
    return (((x & ~kHigh) + ~kHigh) | x) & kHigh;
  }
}

// Appends positions in [elem_begin, elem_end) where a and b differ; a and b point at element 0.
template <size_t W>
void scan_range(const std::byte* a, const std::byte* b, uint64_t elem_begin, uint64_t elem_end,
                std::vector<uint64_t>& out) {
  uint64_t i = elem_begin;
  constexpr uint64_t kBlockElems = kBlockBytes / W;
  // Scalar head up to a block boundary (relative to element 0, so chunks agree on block edges).
  while (i < elem_end && (i % kBlockElems) != 0) {
    if (std::memcmp(a + i * W, b + i * W, W) != 0) out.push_back(i);
    ++i;
  }
  for (; i + kBlockElems <= elem_end; i += kBlockElems) {
    const std::byte* pa = a + i * W;
    const std::byte* pb = b + i * W;
    uint64_t x[8];
    uint64_t any = 0;
    for (int k = 0; k < 8; ++k) {
      x[k] = load_u64(pa + 8 * k) ^ load_u64(pb + 8 * k);
      any |= x[k];
    }
    if (any == 0) continue;
    for (int k = 0; k < 8; ++k) {
      uint64_t w = x[k];
      if (w == 0) continue;
      // One bit per changed lane (the lane's top bit), then one iteration per changed lane: no
      // per-lane branch to mispredict when most blocks change (dense steps).
      uint64_t lanes = lane_flags<W>(w);
      const uint64_t first = i + static_cast<uint64_t>(k) * (8 / W);
      while (lanes) {
        out.push_back(first + static_cast<uint64_t>(__builtin_ctzll(lanes)) / (8 * W));
        lanes &= lanes - 1;
      }
    }
  }
  for (; i < elem_end; ++i) {
    if (std::memcmp(a + i * W, b + i * W, W) != 0) out.push_back(i);
  }
}

void scan(const std::byte* a, const std::byte* b, size_t elem_size, uint64_t begin, uint64_t end,
          std::vector<uint64_t>& out) {
  switch (elem_size) {
    case 1: scan_range<1>(a, b, begin, end, out); break;
    case 2: scan_range<2>(a, b, begin, end, out); break;
    case 4: scan_range<4>(a, b, begin, end, out); break;
    default: scan_range<8>(a, b, begin, end, out); break;
  }
}

struct Chunk {
  size_t job;  // which buffer pair
  uint64_t elem_begin, elem_end;
};

struct Job {
  const std::byte* a;
  const std::byte* b;
  size_t elem_size;
  uint64_t numel;
  std::vector<uint64_t>* out;
};

// Diffs all jobs with one pool; each job's positions come out ascending.
void run_jobs(std::vector<Job>& jobs, size_t threads) {
  std::vector<Chunk> chunks;
  for (size_t j = 0; j < jobs.size(); ++j) {
    const uint64_t per = std::max<uint64_t>(kChunkBytes / jobs[j].elem_size, 1);
    for (uint64_t b = 0; b < jobs[j].numel; b += per) chunks.push_back({j, b, std::min(jobs[j].numel, b + per)});
  }
  std::vector<std::vector<uint64_t>> results(chunks.size());
  ThreadPool pool(threads);
  pool.parallel_for(chunks.size(), [&](size_t c) {
    const Chunk& ch = chunks[c];
    const Job& job = jobs[ch.job];
    scan(job.a, job.b, job.elem_size, ch.elem_begin, ch.elem_end, results[c]);
  });
  // Concatenate per job with one allocation each (growing by insert copied dense results repeatedly).
  std::vector<size_t> totals(jobs.size(), 0);
  for (size_t c = 0; c < chunks.size(); ++c) totals[chunks[c].job] += results[c].size();
  for (size_t j = 0; j < jobs.size(); ++j) jobs[j].out->reserve(jobs[j].out->size() + totals[j]);
  for (size_t c = 0; c < chunks.size(); ++c) {
    auto& dst = *jobs[chunks[c].job].out;
    dst.insert(dst.end(), results[c].begin(), results[c].end());
  }
}

}  // namespace

Result<std::vector<uint64_t>> diff_elements(std::span<const std::byte> base, std::span<const std::byte> target,
                                            size_t elem_size, size_t threads) {
  if (elem_size != 1 && elem_size != 2 && elem_size != 4 && elem_size != 8) {
    return make_error(ErrorCode::kInvalidArgument, "diff: element size " + std::to_string(elem_size) + " is not 1, 2, 4 or 8");
  }
  if (base.size() != target.size() || base.size() % elem_size != 0) {
    return make_error(ErrorCode::kInvalidArgument, "diff: buffers of " + std::to_string(base.size()) + " and " +
                                                       std::to_string(target.size()) + " bytes are not the same whole number of " +
                                                       std::to_string(elem_size) + "-byte elements");
  }
  std::vector<uint64_t> out;
  std::vector<Job> jobs{{base.data(), target.data(), elem_size, base.size() / elem_size, &out}};
  run_jobs(jobs, threads);
  return out;
}

std::string_view tensor_change_name(TensorChange change) {
  switch (change) {
    case TensorChange::kUnchanged: return "unchanged";
    case TensorChange::kModified: return "modified";
    case TensorChange::kAdded: return "added";
    case TensorChange::kRemoved: return "removed";
    case TensorChange::kReplaced: return "replaced";
  }
  return "?";
}

std::vector<TensorDiff> diff_checkpoints(const Checkpoint& base, const Checkpoint& target, size_t threads) {
  std::vector<TensorDiff> out;
  const auto& bt = base.tensors();
  const auto& tt = target.tensors();
  size_t i = 0, j = 0;
  while (i < bt.size() || j < tt.size()) {
    TensorDiff d;
    if (j == tt.size() || (i < bt.size() && bt[i].name < tt[j].name)) {
      d.name = bt[i].name;
      d.change = TensorChange::kRemoved;
      d.base = &bt[i++];
    } else if (i == bt.size() || tt[j].name < bt[i].name) {
      d.name = tt[j].name;
      d.change = TensorChange::kAdded;
      d.target = &tt[j++];
    } else {
      d.name = bt[i].name;
      d.base = &bt[i++];
      d.target = &tt[j++];
      d.change = d.base->dtype == d.target->dtype && d.base->shape == d.target->shape ? TensorChange::kUnchanged
                                                                                      : TensorChange::kReplaced;
    }
    out.push_back(std::move(d));
  }
  std::vector<Job> jobs;
  for (auto& d : out) {
    if (d.change != TensorChange::kUnchanged) continue;
    jobs.push_back({base.bytes(*d.base).data(), target.bytes(*d.target).data(), dtype_size_bytes(d.base->dtype),
                    d.base->numel(), &d.positions});
  }
  run_jobs(jobs, threads);
  for (auto& d : out) {
    if (d.change == TensorChange::kUnchanged && !d.positions.empty()) d.change = TensorChange::kModified;
  }
  return out;
}

}  // namespace dws
