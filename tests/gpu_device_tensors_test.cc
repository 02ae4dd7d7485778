// Model tensors on the device (dws/gpu.h: DeviceChangeTracker, apply_patch_to_device_tensors): the host
// logic of their O(changes) digests checked everywhere against full recomputation (GpuReference), and the
// device paths against the CPU's tracker and apply bit for bit (Gpu, run when a CUDA device is present).
#include <gtest/gtest.h>

#include <numeric>

#include "codec/codecs.h"
#include "dws/diff.h"
#include "dws/digest.h"
#include "dws/gpu.h"
#include "dws/patch.h"
#include "gpu/changed_words.h"
#include "gpu/kernels.h"
#include "gpu_test_util.h"
#include "test_util.h"

namespace dws {
namespace {

using gpu::detail::ChangedWords;
using test::download;
using test::upload;

// Gathers words as the device does (read_words is gather_words' reference).
ChangedWords words_of(const std::vector<uint64_t>& positions, const test::HostTensor& t) {
  ChangedWords cw(positions, dtype_size_bytes(t.dtype));
  gpu::detail::read_words(t.bytes, cw.indices(), cw.words());
  return cw;
}

std::vector<std::byte> values_at(const test::HostTensor& t, const std::vector<uint64_t>& positions) {
  const size_t w = dtype_size_bytes(t.dtype);
  std::vector<std::byte> out(positions.size() * w);
  for (size_t i = 0; i < positions.size(); ++i) std::memcpy(out.data() + i * w, t.bytes.data() + positions[i] * w, w);
  return out;
}

// The digest bookkeeping of both device paths: base digest + delta over the changed words = the target's
// digest recomputed from all its bytes, for every width, tensors whose size is not whole words (the
// partial last word), changes at the first and last element, sparse to dense; and the current values read
// back from the words are the base's.
TEST(GpuReference, ChangedWordsGiveTheRecomputedDigest) {
  std::mt19937_64 rng(81);
  for (DType dt : kAllDTypes) {
    for (uint64_t numel : {uint64_t{1}, uint64_t{7}, uint64_t{5003}}) {
      for (double density : {0.001, 0.05, 0.7, 1.0}) {
        auto base = test::random_tensor(rng, "t", dt, {numel});
        auto next = test::mutate(rng, base, density);
        const size_t w = dtype_size_bytes(dt);
        // Make sure the first and last elements change in the dense cases.
        if (density >= 0.7) {
          next.bytes[0] = ~base.bytes[0];
          next.bytes[(numel - 1) * w] = ~base.bytes[(numel - 1) * w];
        }
        auto positions = *diff_elements(base.bytes, next.bytes, w, 1);
        ChangedWords cw = words_of(positions, base);
        for (size_t i = 1; i < cw.indices().size(); ++i) ASSERT_LT(cw.indices()[i - 1], cw.indices()[i]);
        std::vector<std::byte> current(positions.size() * w);
        cw.read_values(current);
        EXPECT_EQ(current, values_at(base, positions));
        const Digest128 base_digest = tensor_digest("t", dt, base.shape, base.bytes);
        const Digest128 got = digest_add(base_digest, cw.delta(tensor_seed("t", dt, base.shape), values_at(next, positions)));
        EXPECT_EQ(got, tensor_digest("t", dt, next.shape, next.bytes))
            << dtype_name(dt) << " numel " << numel << " density " << density << " changes " << positions.size();
      }
    }
  }
}

// A wrong new value changes the derived digest (the check that refuses a bad patch can fail).
TEST(GpuReference, ChangedWordsDigestSeesAWrongValue) {
  std::mt19937_64 rng(82);
  auto base = test::random_tensor(rng, "w", DType::kBF16, {999});
  auto next = test::mutate(rng, base, 0.02);
  auto positions = *diff_elements(base.bytes, next.bytes, 2, 1);
  ASSERT_FALSE(positions.empty());
  ChangedWords cw = words_of(positions, base);
  auto values = values_at(next, positions);
  values.back() ^= std::byte{0x01};
  const Digest128 got = digest_add(tensor_digest("w", DType::kBF16, base.shape, base.bytes),
                                   cw.delta(tensor_seed("w", DType::kBF16, base.shape), values));
  EXPECT_NE(got, tensor_digest("w", DType::kBF16, next.shape, next.bytes));
}

TEST(GpuReference, ReadWordsPadsThePartialLastWord) {
  std::vector<std::byte> t(11);
  for (size_t i = 0; i < t.size(); ++i) t[i] = static_cast<std::byte>(i + 1);
  const uint64_t indices[] = {0, 1, 2};
  uint64_t words[3];
  gpu::detail::read_words(t, indices, words);
  EXPECT_EQ(words[0], 0x0807060504030201ull);
  EXPECT_EQ(words[1], 0x0000000000'0b0a09ull);
  EXPECT_EQ(words[2], 0u);  // past the end: zero
}

// The receiver's host logic for operands (XOR masks, native key distances): current values read from the
// gathered words, apply_operands over them, must give the target values, for every patch encoding that
// decodes without the base.
TEST(GpuReference, OperandsOverGatheredWordsGiveTheTargetValues) {
  std::mt19937_64 rng(83);
  for (DType dt : {DType::kBF16, DType::kF32, DType::kU8, DType::kF64}) {
    auto base = test::random_tensor(rng, "t", dt, {4001});
    test::sprinkle_special_values(rng, base);
    auto next = test::mutate(rng, base, 0.03);
    auto positions = *diff_elements(base.bytes, next.bytes, dtype_size_bytes(dt), 1);
    for (Encoding enc : {Encoding::kGapsZstd, Encoding::kXorZstd, Encoding::kNative}) {
      auto e = codec::encode_tensor(enc, {dt, base.bytes, next.bytes, positions}, base.shape, {});
      ASSERT_TRUE(e.ok()) << e.status().to_string();
      const codec::DecodeParams params{e->encoding, dt, 4001, e->changes, e->index_dtype};
      test::Decoded ops;
      Status st = codec::decode_operands(params, test::views_of(*e), ops.sink());
      if (st.code() == ErrorCode::kUnsupported) continue;  // native's class layout: reloaded whole instead
      ASSERT_TRUE(st.ok()) << st.to_string();
      ChangedWords cw = words_of(ops.positions, base);
      std::vector<std::byte> values(ops.positions.size() * dtype_size_bytes(dt));
      cw.read_values(values);
      std::vector<uint64_t> local(ops.positions.size());
      std::iota(local.begin(), local.end(), uint64_t{0});
      codec::apply_operands(dt, codec::change_op(enc), values, local, ops.values);
      EXPECT_EQ(values, values_at(next, positions)) << encoding_name(enc) << " " << dtype_name(dt);
    }
  }
}

// Without a device (or CUDA) the tracker and the device apply refuse with a reason, and hold nothing.
TEST(GpuReference, DeviceTensorsWithoutADeviceSayWhy) {
  if (test::have_device()) GTEST_SKIP() << "a device is present: the device tests cover it";
  std::byte bytes[8]{};
  const gpu::NamedDeviceTensor t{"w", DType::kU8, {8}, bytes};
  gpu::DeviceChangeTracker tracker;
  auto r = tracker.reset({&t, 1}, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(r.status().code() == ErrorCode::kUnsupported || r.status().code() == ErrorCode::kDevice) << r.status().to_string();
  EXPECT_FALSE(tracker.has_snapshot());
  EXPECT_FALSE(tracker.take({&t, 1}, nullptr).ok());
}

// ---- device tests ----

struct DeviceModel {
  std::vector<gpu::DeviceBuffer> buffers;
  std::vector<gpu::NamedDeviceTensor> tensors;
};

DeviceModel upload_model(const std::vector<test::HostTensor>& host, size_t misalign_bytes = 0) {
  DeviceModel m;
  for (const auto& t : host) {
    auto b = gpu::DeviceBuffer::allocate(t.bytes.size() + 16);
    EXPECT_TRUE(b.ok());
    // Element-aligned but not 8-aligned when asked (a tensor view at an offset): the word gather's byte path.
    const size_t offset = misalign_bytes % dtype_size_bytes(t.dtype) == 0 ? misalign_bytes : 0;
    std::byte* p = static_cast<std::byte*>(b->data()) + offset;
    EXPECT_TRUE(gpu::copy(p, t.bytes.data(), t.bytes.size(), nullptr).ok());
    m.tensors.push_back({t.name, t.dtype, t.shape, p});
    m.buffers.push_back(std::move(*b));
  }
  return m;
}

void overwrite(const DeviceModel& m, const std::vector<test::HostTensor>& host) {
  for (size_t i = 0; i < host.size(); ++i) ASSERT_TRUE(gpu::copy(m.tensors[i].data, host[i].bytes.data(), host[i].bytes.size(), nullptr).ok());
}

std::vector<test::HostTensor> random_model(std::mt19937_64& rng) {
  std::vector<test::HostTensor> out;
  int k = 0;
  for (DType dt : kAllDTypes) out.push_back(test::random_tensor(rng, "t" + std::to_string(k++), dt, {1 + rng() % 9000}));
  out.push_back(test::random_tensor(rng, "empty", DType::kBF16, {0}));
  return out;
}

std::vector<test::HostTensor> mutate_model(std::mt19937_64& rng, const std::vector<test::HostTensor>& m, double density) {
  std::vector<test::HostTensor> out;
  for (const auto& t : m) out.push_back(test::mutate(rng, t, density));
  return out;
}

TEST(Gpu, GatherWordsMatchesReadWords) {
  REQUIRE_DEVICE();
  std::mt19937_64 rng(84);
  auto t = test::random_tensor(rng, "t", DType::kU8, {10003});
  for (size_t offset : {0, 2, 5}) {
    auto buffer = gpu::DeviceBuffer::allocate(t.bytes.size() + 8);
    ASSERT_TRUE(buffer.ok());
    std::byte* p = static_cast<std::byte*>(buffer->data()) + offset;
    ASSERT_TRUE(gpu::copy(p, t.bytes.data(), t.bytes.size(), nullptr).ok());
    std::vector<uint64_t> indices;
    for (uint64_t i = 0; i <= t.bytes.size() / 8; i += 1 + rng() % 3) indices.push_back(i);
    indices.push_back(t.bytes.size() / 8);  // the partial last word
    std::vector<uint64_t> want(indices.size());
    gpu::detail::read_words(t.bytes, indices, want);
    gpu::DeviceBuffer d_indices = upload(std::as_bytes(std::span(indices)));
    auto d_words = gpu::DeviceBuffer::allocate(indices.size() * 8);
    ASSERT_TRUE(d_words.ok());
    std::vector<gpu::detail::WordGatherChunk> chunks;
    for (uint64_t first = 0; first < indices.size(); first += 1000) {
      chunks.push_back({p, t.bytes.size(), static_cast<const uint64_t*>(d_indices.data()) + first,
                        static_cast<uint64_t*>(d_words->data()) + first,
                        static_cast<uint32_t>(std::min<uint64_t>(1000, indices.size() - first))});
    }
    ASSERT_TRUE(gpu::detail::gather_words(chunks.data(), chunks.size(), nullptr).ok());
    auto got = download(d_words->data(), indices.size() * 8);
    EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size()), 0) << "offset " << offset;
  }
}

// The tracker yields what the CPU diff finds (positions, base and target values) and the digests a full
// recomputation gives, with its snapshot in device memory and in pinned host memory; a take with nothing
// changed yields nothing; the patch it feeds is applied by the CPU's apply to the target.
TEST(Gpu, DeviceTrackerYieldsTheCpuChangesAndDigests) {
  REQUIRE_DEVICE();
  for (auto memory : {gpu::DeviceChangeTracker::Memory::kDevice, gpu::DeviceChangeTracker::Memory::kPinnedHost}) {
    std::mt19937_64 rng(85);
    auto step0 = random_model(rng);
    DeviceModel live = upload_model(step0, /*misalign_bytes=*/2);
    gpu::DeviceChangeTracker tracker(memory);
    auto digests = tracker.reset(live.tensors, nullptr);
    ASSERT_TRUE(digests.ok()) << digests.status().to_string();
    for (const auto& t : step0) EXPECT_EQ(digests->at(t.name), tensor_digest(t.name, t.dtype, t.shape, t.bytes)) << t.name;
    auto prev = step0;
    for (double density : {0.004, 0.3}) {
      auto next = mutate_model(rng, prev, density);
      overwrite(live, next);
      auto taken = tracker.take(live.tensors, nullptr);
      ASSERT_TRUE(taken.ok()) << taken.status().to_string();
      size_t k = 0;
      for (size_t i = 0; i < next.size(); ++i) {
        const size_t w = dtype_size_bytes(next[i].dtype);
        auto positions = *diff_elements(prev[i].bytes, next[i].bytes, w, 1);
        if (positions.empty()) continue;
        ASSERT_LT(k, taken->size());
        const TrackedTensorChanges& c = (*taken)[k++];
        EXPECT_EQ(c.name, next[i].name);
        EXPECT_EQ(c.positions, positions) << c.name;
        EXPECT_EQ(c.base_values, values_at(prev[i], positions)) << c.name;
        EXPECT_EQ(c.target_values, values_at(next[i], positions)) << c.name;
        EXPECT_EQ(c.base_digest, tensor_digest(c.name, c.dtype, c.shape, prev[i].bytes)) << c.name;
        EXPECT_EQ(c.target_digest, tensor_digest(c.name, c.dtype, c.shape, next[i].bytes)) << c.name;
      }
      EXPECT_EQ(k, taken->size());
      prev = next;
    }
    auto none = tracker.take(live.tensors, nullptr);
    ASSERT_TRUE(none.ok());
    EXPECT_TRUE(none->empty());
    // A layout other than reset's is refused, naming the tensor.
    auto other = live.tensors;
    other[1].shape = {other[1].numel() + 1};
    auto refused = tracker.take(other, nullptr);
    EXPECT_EQ(refused.status().code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(refused.status().message().find("'t1'"), std::string::npos) << refused.status().message();
  }
}

// apply_patch_to_device_tensors gives what the CPU apply gives, for every encoding a receiver can take without
// the base; it refuses a base whose digest is wrong and, when the device tensor differs from what its
// digest claims, the result's digest check refuses too: in both cases nothing is written.
TEST(Gpu, ApplyPatchToDeviceTensorsMatchesTheCpu) {
  REQUIRE_DEVICE();
  std::mt19937_64 rng(86);
  test::TempDir dir;
  auto base = random_model(rng);
  base.pop_back();  // write_tensors of an empty tensor is covered elsewhere
  auto next = mutate_model(rng, base, 0.02);
  ASSERT_TRUE(test::write_tensors(dir / "base.safetensors", base).ok());
  ASSERT_TRUE(test::write_tensors(dir / "next.safetensors", next).ok());
  auto cb = Checkpoint::open(dir / "base.safetensors");
  auto cn = Checkpoint::open(dir / "next.safetensors");
  ASSERT_TRUE(cb.ok() && cn.ok());
  TensorDigests base_digests;
  for (const auto& t : base) base_digests[t.name] = tensor_digest(t.name, t.dtype, t.shape, t.bytes);
  for (Encoding enc : test::kPatchEncodings) {
    const std::string path = dir / ("p_" + std::string(encoding_name(enc)) + ".dwsp");
    ASSERT_TRUE(create_patch(*cb, *cn, path, {.encoding = enc, .threads = 1}).ok());
    auto patch = Patch::open(path);
    ASSERT_TRUE(patch.ok());
    DeviceModel live = upload_model(base, /*misalign_bytes=*/enc == Encoding::kXorZstd ? 2 : 0);
    TensorDigests digests = base_digests;
    auto written = gpu::apply_patch_to_device_tensors(*patch, live.tensors, digests, nullptr);
    if (!written.ok() && written.status().code() == ErrorCode::kUnsupported) {
      // Native's class layout: nothing written, the caller reloads.
      for (size_t i = 0; i < base.size(); ++i) EXPECT_EQ(download(live.tensors[i].data, base[i].bytes.size()), base[i].bytes);
      continue;
    }
    ASSERT_TRUE(written.ok()) << encoding_name(enc) << ": " << written.status().to_string();
    for (size_t i = 0; i < base.size(); ++i) {
      EXPECT_EQ(download(live.tensors[i].data, base[i].bytes.size()), next[i].bytes) << encoding_name(enc) << " " << base[i].name;
      EXPECT_EQ(digests.at(base[i].name), tensor_digest(next[i].name, next[i].dtype, next[i].shape, next[i].bytes));
    }
  }
  auto patch = Patch::open(dir / "p_xor_zstd.dwsp");
  ASSERT_TRUE(patch.ok());
  // A wrong recorded digest: refused before anything is read.
  DeviceModel live = upload_model(base);
  TensorDigests wrong = base_digests;
  wrong.begin()->second.low ^= 1;
  auto r = gpu::apply_patch_to_device_tensors(*patch, live.tensors, wrong, nullptr);
  EXPECT_EQ(r.status().code(), ErrorCode::kBaseMismatch) << r.status().to_string();
  // The device tensor was changed behind the digests' back: the result's digest check refuses.
  auto tampered = base;
  auto positions = *diff_elements(base[8].bytes, next[8].bytes, dtype_size_bytes(base[8].dtype), 1);
  ASSERT_FALSE(positions.empty());
  tampered[8].bytes[positions[0] * dtype_size_bytes(base[8].dtype)] ^= std::byte{0x10};
  overwrite(live, tampered);
  TensorDigests digests = base_digests;
  r = gpu::apply_patch_to_device_tensors(*patch, live.tensors, digests, nullptr);
  EXPECT_EQ(r.status().code(), ErrorCode::kTargetMismatch) << r.status().to_string();
  for (size_t i = 0; i < base.size(); ++i) EXPECT_EQ(download(live.tensors[i].data, base[i].bytes.size()), tampered[i].bytes);
  EXPECT_EQ(digests, base_digests);
}

}  // namespace
}  // namespace dws
