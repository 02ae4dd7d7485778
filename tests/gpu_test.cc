// GPU path: the CPU references of the operand decoders (run everywhere) and the CUDA kernels checked
// against them bit for bit (run when a CUDA device is present; skipped otherwise, and on builds without
// CUDA, where the API must answer E_UNSUPPORTED).
#include <gtest/gtest.h>

#include <cstring>

#include "codec/codecs.h"
#include "codec/native.h"
#include "dws/diff.h"
#include "dws/gpu.h"
#include "dws/patch.h"
#include "test_util.h"

namespace dws {
namespace {

using test::views_of;

// Special bit patterns mixed into random tensors: NaNs, infinities, signed zeros, extremes.
void sprinkle_special_values(std::mt19937_64& rng, test::HostTensor& t) {
  const size_t w = dtype_size_bytes(t.dtype);
  const uint64_t n = t.bytes.size() / w;
  const uint64_t patterns[] = {0, ~0ull, 1ull << (8 * w - 1), (1ull << (8 * w - 1)) - 1, 0x7FC07FC07FC07FC0ull, 0xFF80FF80FF80FF80ull};
  for (uint64_t i = 0; i < n / 16; ++i) {
    const uint64_t at = rng() % n;
    const uint64_t v = patterns[rng() % std::size(patterns)];
    std::memcpy(t.bytes.data() + at * w, &v, w);
  }
}

// decode_operands + apply_operands must reproduce exactly what decode_changes (new values) gives, for every
// encoding that decodes changes, every dtype, several densities; this is the reference the kernels match.
TEST(GpuReference, OperandsReproduceDecodedValues) {
  std::mt19937_64 rng(71);
  for (DType dt : kAllDTypes) {
    for (double density : {1e-3, 0.05, 0.6}) {
      auto base = test::random_tensor(rng, "t", dt, {5003});
      sprinkle_special_values(rng, base);
      auto next = test::mutate(rng, base, density);
      auto positions = diff_elements(base.bytes, next.bytes, dtype_size_bytes(dt), 1);
      ASSERT_TRUE(positions.ok());
      if (positions->empty()) continue;  // an unchanged tensor is not in a patch
      for (Encoding enc : {Encoding::kIndices, Encoding::kGaps, Encoding::kGapsZstd, Encoding::kXorZstd, Encoding::kNative}) {
        auto e = codec::encode_tensor(enc, {dt, base.bytes, next.bytes, *positions}, base.shape, {});
        ASSERT_TRUE(e.ok()) << e.status().to_string();
        const codec::DecodeParams params{e->encoding, dt, base.bytes.size() / dtype_size_bytes(dt), e->changes, e->index_dtype};
        test::Decoded ops;
        Status st = codec::decode_operands(params, views_of(*e), ops.sink());
        ASSERT_TRUE(st.ok()) << encoding_name(enc) << " " << dtype_name(dt) << ": " << st.to_string();
        ASSERT_EQ(ops.positions, *positions) << encoding_name(enc);
        const codec::ChangeOp op = codec::change_op(enc);
        ASSERT_EQ(ops.values.size(), positions->size() * codec::operand_size_bytes(op, dt));
        std::vector<std::byte> out = base.bytes;
        codec::apply_operands(dt, op, out, ops.positions, ops.values);
        EXPECT_EQ(out, next.bytes) << encoding_name(enc) << " " << dtype_name(dt) << " density " << density;
      }
    }
  }
}

TEST(GpuReference, NativeOperandsCoverGapsAndBitmapLayoutsButNotClass) {
  std::mt19937_64 rng(72);
  auto base = test::random_tensor(rng, "t", DType::kBF16, {20000});
  auto next = test::mutate(rng, base, 0.2);
  auto positions = *diff_elements(base.bytes, next.bytes, 2, 1);
  for (auto layout : {codec::native::Layout::kGaps, codec::native::Layout::kBitmap, codec::native::Layout::kClass}) {
    auto payload = codec::native::encode(DType::kBF16, base.bytes, next.bytes, positions, {.only = layout});
    ASSERT_TRUE(payload.ok());
    test::Decoded ops;
    Status st = codec::native::decode_operands(DType::kBF16, 20000, positions.size(), *payload, ops.sink());
    if (layout == codec::native::Layout::kClass) {
      EXPECT_EQ(st.code(), ErrorCode::kUnsupported) << st.to_string();
      continue;
    }
    ASSERT_TRUE(st.ok()) << st.to_string();
    std::vector<std::byte> out = base.bytes;
    codec::apply_operands(DType::kBF16, codec::ChangeOp::kAddKey, out, ops.positions, ops.values);
    EXPECT_EQ(out, next.bytes);
  }
}

// ---- device tests ----

bool have_device() {
  if (!gpu::built_with_cuda()) return false;
  auto n = gpu::device_count();
  return n.ok() && *n > 0;
}

#define REQUIRE_DEVICE()                                                   \
  do {                                                                     \
    if (!have_device()) GTEST_SKIP() << "no CUDA device (or built without CUDA)"; \
  } while (0)

TEST(Gpu, WithoutCudaEveryCallSaysSo) {
  if (gpu::built_with_cuda()) GTEST_SKIP() << "built with CUDA";
  EXPECT_EQ(gpu::device_count().status().code(), ErrorCode::kUnsupported);
  EXPECT_NE(gpu::device_count().status().message().find("built without CUDA"), std::string::npos);
  EXPECT_EQ(gpu::DeviceBuffer::allocate(16).status().code(), ErrorCode::kUnsupported);
  gpu::Differ differ;
  std::byte a[4]{}, b[4]{};
  const gpu::DiffInput in{a, b, DType::kU8, 4};
  EXPECT_EQ(differ.diff({&in, 1}, nullptr).status().code(), ErrorCode::kUnsupported);
}

gpu::DeviceBuffer upload(std::span<const std::byte> bytes) {
  auto b = gpu::DeviceBuffer::allocate(bytes.size());
  EXPECT_TRUE(b.ok()) << b.status().to_string();
  EXPECT_TRUE(gpu::copy(b->data(), bytes.data(), bytes.size(), nullptr).ok());
  return std::move(*b);
}

std::vector<std::byte> download(const void* device, size_t bytes) {
  std::vector<std::byte> out(bytes);
  EXPECT_TRUE(gpu::copy(out.data(), device, bytes, nullptr).ok());
  return out;
}

// The device diff equals diff_elements (positions, and the values there) for every width, at sizes that end
// inside, at and just past a tile, on unaligned (element-aligned) inputs, from no change to all changed;
// all cases go through one diff call, so tensors of mixed widths share the launches.
TEST(Gpu, DiffMatchesTheCpuDiffBitForBit) {
  REQUIRE_DEVICE();
  std::mt19937_64 rng(73);
  struct Case {
    std::string what;
    DType dtype;
    uint64_t numel;
    size_t misalign;
    test::HostTensor base, next;
    gpu::DeviceBuffer d_base, d_next;
  };
  std::vector<Case> cases;
  for (DType dt : {DType::kU8, DType::kBF16, DType::kF32, DType::kF64}) {
    const size_t w = dtype_size_bytes(dt);
    const uint64_t tile = 16384 / w;
    for (uint64_t numel : std::vector<uint64_t>{0, 1, 31, 33, tile - 1, tile, tile + 1, 5 * tile + 7, 300001}) {
      for (double density : {0.0, 1e-4, 0.01, 0.5, 1.0}) {
        for (size_t misalign : {size_t{0}, size_t{1}}) {
          Case c{std::string(dtype_name(dt)) + " numel " + std::to_string(numel) + " density " + std::to_string(density) +
                     " misalign " + std::to_string(misalign),
                 dt, numel, misalign, test::random_tensor(rng, "t", dt, {numel + misalign}), {}, {}, {}};
          sprinkle_special_values(rng, c.base);
          c.next = test::mutate(rng, c.base, density);
          c.d_base = upload(c.base.bytes);
          c.d_next = upload(c.next.bytes);
          cases.push_back(std::move(c));
        }
      }
    }
  }
  std::vector<gpu::DiffInput> inputs;
  for (const Case& c : cases) {
    const size_t off = c.misalign * dtype_size_bytes(c.dtype);
    inputs.push_back({static_cast<const std::byte*>(c.d_base.data()) + off, static_cast<const std::byte*>(c.d_next.data()) + off,
                      c.dtype, c.numel});
  }
  gpu::Differ differ;
  for (int round = 0; round < 2; ++round) {  // the second call reuses the scratch
    auto changes = differ.diff(inputs, nullptr);
    ASSERT_TRUE(changes.ok()) << changes.status().to_string();
    auto host = gpu::Differ::to_host(*changes, nullptr);
    ASSERT_TRUE(host.ok());
    ASSERT_EQ(host->size(), cases.size());
    uint64_t total = 0;
    for (size_t k = 0; k < cases.size(); ++k) {
      const Case& c = cases[k];
      const size_t w = dtype_size_bytes(c.dtype);
      const auto b = std::span<const std::byte>(c.base.bytes).subspan(c.misalign * w);
      const auto t = std::span<const std::byte>(c.next.bytes).subspan(c.misalign * w);
      const auto expected = *diff_elements(b, t, w, 1);
      const gpu::HostChanges& h = (*host)[k];
      ASSERT_EQ(h.positions, expected) << c.what;
      for (size_t i = 0; i < expected.size(); ++i) {
        ASSERT_EQ(std::memcmp(h.base_values.data() + i * w, b.data() + expected[i] * w, w), 0) << c.what;
        ASSERT_EQ(std::memcmp(h.target_values.data() + i * w, t.data() + expected[i] * w, w), 0) << c.what;
      }
      total += expected.size();
    }
    EXPECT_EQ(changes->total, total);
    // A snapshot follows the target by writing only the changes.
    std::vector<gpu::DeviceBuffer> snapshots;
    std::vector<gpu::DeviceTensor> views;
    for (const Case& c : cases) {
      const size_t w = dtype_size_bytes(c.dtype);
      snapshots.push_back(upload(std::span<const std::byte>(c.base.bytes).subspan(c.misalign * w)));
      views.push_back({snapshots.back().data(), c.dtype, c.numel});
    }
    ASSERT_TRUE(gpu::apply_changes(views, *changes, nullptr).ok());
    ASSERT_TRUE(gpu::synchronize(nullptr).ok());
    for (size_t k = 0; k < cases.size(); ++k) {
      const Case& c = cases[k];
      const size_t w = dtype_size_bytes(c.dtype);
      const auto t = std::span<const std::byte>(c.next.bytes).subspan(c.misalign * w);
      EXPECT_EQ(download(snapshots[k].data(), c.numel * w), std::vector<std::byte>(t.begin(), t.end())) << c.what;
    }
  }
}

// apply_tensor writes exactly what the CPU apply writes, for every encoding and dtype.
TEST(Gpu, ApplyTensorMatchesTheCpuApply) {
  REQUIRE_DEVICE();
  std::mt19937_64 rng(74);
  test::TempDir dir;
  std::vector<test::HostTensor> base, next;
  int k = 0;
  for (DType dt : kAllDTypes) {
    for (double density : {0.002, 0.04, 0.5}) {
      auto t = test::random_tensor(rng, "t" + std::to_string(k++), dt, {3000 + static_cast<uint64_t>(rng() % 5000)});
      sprinkle_special_values(rng, t);
      next.push_back(test::mutate(rng, t, density));
      base.push_back(std::move(t));
    }
  }
  ASSERT_TRUE(test::write_tensors(dir / "base.safetensors", base).ok());
  ASSERT_TRUE(test::write_tensors(dir / "next.safetensors", next).ok());
  auto cb = Checkpoint::open(dir / "base.safetensors");
  auto cn = Checkpoint::open(dir / "next.safetensors");
  ASSERT_TRUE(cb.ok() && cn.ok());
  for (Encoding enc : test::kPatchEncodings) {
    const std::string path = dir / ("p_" + std::string(encoding_name(enc)) + ".dwsp");
    ASSERT_TRUE(create_patch(*cb, *cn, path, {.encoding = enc, .threads = 1}).ok());
    auto patch = Patch::open(path);
    ASSERT_TRUE(patch.ok());
    ASSERT_TRUE(patch->verify_payload_hashes(1).ok());
    for (size_t i = 0; i < base.size(); ++i) {
      const PatchTensor* pt = patch->header().find(base[i].name);
      ASSERT_NE(pt, nullptr);
      gpu::DeviceBuffer d = upload(base[i].bytes);
      const uint64_t numel = base[i].bytes.size() / dtype_size_bytes(base[i].dtype);
      auto st = gpu::apply_tensor(*patch, *pt, {d.data(), base[i].dtype, numel}, nullptr);
      ASSERT_TRUE(st.ok()) << encoding_name(enc) << " " << base[i].name << ": " << st.status().to_string();
      EXPECT_EQ(download(d.data(), base[i].bytes.size()), next[i].bytes)
          << encoding_name(enc) << " " << base[i].name << " " << dtype_name(base[i].dtype);
    }
  }
}

TEST(Gpu, ApplyTensorRefusesAMismatchedDeviceTensorAndWritesNothing) {
  REQUIRE_DEVICE();
  std::mt19937_64 rng(75);
  test::TempDir dir;
  auto b = test::random_tensor(rng, "w", DType::kBF16, {4096});
  auto n = test::mutate(rng, b, 0.01);
  ASSERT_TRUE(test::write_tensors(dir / "b.safetensors", {b}).ok());
  ASSERT_TRUE(test::write_tensors(dir / "n.safetensors", {n}).ok());
  ASSERT_TRUE(create_patch(*Checkpoint::open(dir / "b.safetensors"), *Checkpoint::open(dir / "n.safetensors"),
                           dir / "p.dwsp", {.encoding = Encoding::kNative})
                  .ok());
  auto patch = Patch::open(dir / "p.dwsp");
  ASSERT_TRUE(patch.ok());
  gpu::DeviceBuffer d = upload(b.bytes);
  auto st = gpu::apply_tensor(*patch, patch->header().tensors[0], {d.data(), DType::kF16, 4096}, nullptr);
  EXPECT_EQ(st.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(st.status().message().find("'w'"), std::string::npos) << st.status().message();
  st = gpu::apply_tensor(*patch, patch->header().tensors[0], {d.data(), DType::kBF16, 4095}, nullptr);
  EXPECT_EQ(st.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(download(d.data(), b.bytes.size()), b.bytes);
}

}  // namespace
}  // namespace dws
