// Helpers shared by the GPU tests: whether a device is present, special values, uploads and downloads.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <iterator>
#include <random>
#include <span>
#include <vector>

#include "dws/gpu.h"
#include "test_util.h"

namespace dws::test {

inline bool have_device() {
  if (!gpu::built_with_cuda()) return false;
  auto n = gpu::device_count();
  return n.ok() && *n > 0;
}

// Skips a device test where no CUDA device is present (or the build has no CUDA).
#define REQUIRE_DEVICE()                                                              \
  do {                                                                                \
    if (!::dws::test::have_device()) GTEST_SKIP() << "no CUDA device (or built without CUDA)"; \
  } while (0)

// Special bit patterns mixed into random tensors: NaNs, infinities, signed zeros, extremes.
inline void sprinkle_special_values(std::mt19937_64& rng, HostTensor& t) {
  const size_t w = dtype_size_bytes(t.dtype);
  const uint64_t n = t.bytes.size() / w;
  const uint64_t patterns[] = {0, ~0ull, 1ull << (8 * w - 1), (1ull << (8 * w - 1)) - 1, 0x7FC07FC07FC07FC0ull, 0xFF80FF80FF80FF80ull};
  for (uint64_t i = 0; i < n / 16; ++i) {
    const uint64_t at = rng() % n;
    const uint64_t v = patterns[rng() % std::size(patterns)];
    std::memcpy(t.bytes.data() + at * w, &v, w);
  }
}

inline gpu::DeviceBuffer upload(std::span<const std::byte> bytes) {
  auto b = gpu::DeviceBuffer::allocate(bytes.size());
  EXPECT_TRUE(b.ok()) << b.status().to_string();
  EXPECT_TRUE(gpu::copy(b->data(), bytes.data(), bytes.size(), nullptr).ok());
  return std::move(*b);
}

inline std::vector<std::byte> download(const void* device, size_t bytes) {
  std::vector<std::byte> out(bytes);
  EXPECT_TRUE(gpu::copy(out.data(), device, bytes, nullptr).ok());
  return out;
}

}  // namespace dws::test
