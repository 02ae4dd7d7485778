// GPU path: the CPU references of the operand decoders (run everywhere) and the CUDA kernels checked
// against them bit for bit (run when a CUDA device is present; skipped otherwise, and on builds without
// CUDA, where the API must answer E_UNSUPPORTED).
#include <gtest/gtest.h>

#include <cstring>
#include <thread>

#include "codec/codecs.h"
#include "codec/native.h"
#include "dws/diff.h"
#include "dws/gpu.h"
#include "dws/gpu_broadcast.h"
#include "dws/patch.h"
#include "gpu/broadcast_internal.h"
#include "gpu/kernels.h"
#include "gpu_test_util.h"
#include "test_util.h"

namespace dws {
namespace {

using test::views_of;
using test::have_device;
using test::sprinkle_special_values;
using test::upload;
using test::download;

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

// The batched scatter's chunking (host logic, run everywhere): chunks of at most kScatterChunk changes,
// each pointing at its own positions and operands, covering all changes once.
TEST(GpuReference, ScatterChunksCoverEveryChangeOnce) {
  for (codec::ChangeOp op : {codec::ChangeOp::kSet, codec::ChangeOp::kXor, codec::ChangeOp::kAddKey}) {
    for (uint64_t n : {uint64_t{0}, uint64_t{1}, uint64_t{gpu::detail::kScatterChunk}, uint64_t{2 * gpu::detail::kScatterChunk + 5}}) {
      std::vector<gpu::detail::ScatterChunk> chunks;
      const auto* positions = reinterpret_cast<const uint64_t*>(uintptr_t{0x10000});
      const auto* operands = reinterpret_cast<const std::byte*>(uintptr_t{0x900000});
      gpu::detail::add_scatter_chunks(nullptr, DType::kBF16, op, positions, operands, n, chunks);
      const size_t ow = codec::operand_size_bytes(op, DType::kBF16);
      uint64_t covered = 0;
      for (const auto& c : chunks) {
        EXPECT_GE(c.count, 1u);
        EXPECT_LE(c.count, gpu::detail::kScatterChunk);
        EXPECT_EQ(c.positions, positions + covered);
        EXPECT_EQ(c.operands, operands + covered * ow);
        EXPECT_EQ(c.elem_size, 2);
        EXPECT_EQ(c.op, static_cast<uint8_t>(op));
        EXPECT_EQ(c.is_float, 1);
        covered += c.count;
      }
      EXPECT_EQ(covered, n);
      EXPECT_EQ(chunks.size(), (n + gpu::detail::kScatterChunk - 1) / gpu::detail::kScatterChunk);
    }
  }
}

// The NCCL transport's receiver logic on the host: a change set laid out as Differ lays it out, cut into
// buckets by plan_buckets, each bucket's two ranges copied into a slot exactly as the broadcast delivers
// them, and the chunks of bucket_chunks applied with the CPU's apply_operands must give the target; every
// change is in one bucket, and no slot exceeds bucket_bytes.
TEST(GpuReference, BroadcastBucketsReproduceTheTargetOnTheHost) {
  std::mt19937_64 rng(77);
  std::vector<test::HostTensor> base, next;
  for (int i = 0; i < 40; ++i) {
    const DType dt = kAllDTypes[(i * 7) % std::size(kAllDTypes)];
    base.push_back(test::random_tensor(rng, "t", dt, {i % 9 == 0 ? 0u : 1u + static_cast<uint64_t>(rng() % 20000)}));
    next.push_back(test::mutate(rng, base.back(), i % 5 == 0 ? 0.0 : 0.001 * (1 + i % 13) * (i % 3 == 0 ? 100 : 1)));
  }
  // The change set, host side: positions, and target values at Differ's 8-aligned per-tensor offsets.
  std::vector<DType> dtypes;
  std::vector<uint64_t> counts;
  std::vector<std::vector<uint64_t>> pos;
  for (size_t i = 0; i < base.size(); ++i) {
    dtypes.push_back(base[i].dtype);
    pos.push_back(*diff_elements(base[i].bytes, next[i].bytes, dtype_size_bytes(base[i].dtype), 1));
    counts.push_back(pos.back().size());
  }
  const std::vector<uint64_t> value_byte = gpu::value_layout(dtypes, counts);
  std::vector<uint64_t> all_positions;
  std::vector<std::byte> values(value_byte.back() + counts.back() * dtype_size_bytes(dtypes.back()) + 8);
  for (size_t i = 0; i < base.size(); ++i) {
    const size_t w = dtype_size_bytes(dtypes[i]);
    EXPECT_EQ(value_byte[i] % 8, 0u);
    for (size_t k = 0; k < pos[i].size(); ++k) {
      all_positions.push_back(pos[i][k]);
      std::memcpy(values.data() + value_byte[i] + k * w, next[i].bytes.data() + pos[i][k] * w, w);
    }
  }
  for (uint64_t bucket_bytes : {uint64_t{4096}, uint64_t{10007}, uint64_t{1} << 16, uint64_t{1} << 30}) {
    const auto buckets = gpu::plan_buckets(dtypes, counts, bucket_bytes);
    std::vector<std::vector<std::byte>> replica;
    std::vector<void*> data;
    for (const auto& t : base) replica.push_back(t.bytes);
    for (auto& r : replica) data.push_back(r.data());
    uint64_t expected_first = 0;
    for (const gpu::Bucket& b : buckets) {
      ASSERT_GT(b.changes, 0u);
      ASSERT_EQ(b.first_change, expected_first);
      ASSERT_LE(b.buffer_bytes(), bucket_bytes);
      expected_first += b.changes;
      // What the broadcast delivers into a slot: the positions range, then the value range at value_offset.
      std::vector<uint64_t> slot_words((b.buffer_bytes() + 7) / 8 + 1);
      auto* slot = reinterpret_cast<std::byte*>(slot_words.data());
      std::memcpy(slot, all_positions.data() + b.first_change, b.changes * 8);
      std::memcpy(slot + b.value_offset(), values.data() + b.value_begin, b.value_end - b.value_begin);
      std::vector<gpu::detail::ScatterChunk> chunks;
      gpu::detail::bucket_chunks(b, dtypes, value_byte, data, slot, chunks);
      uint64_t in_chunks = 0;
      for (const auto& c : chunks) {
        const size_t i = std::find(data.begin(), data.end(), c.tensor) - data.begin();
        ASSERT_LT(i, data.size());
        const size_t w = dtype_size_bytes(dtypes[i]);
        ASSERT_EQ(reinterpret_cast<uintptr_t>(c.operands) % w, 0u) << "values must stay aligned in the slot";
        codec::apply_operands(dtypes[i], codec::ChangeOp::kSet, replica[i], {c.positions, c.count},
                              {static_cast<const std::byte*>(c.operands), c.count * w});
        in_chunks += c.count;
      }
      ASSERT_EQ(in_chunks, b.changes);
    }
    EXPECT_EQ(expected_first, all_positions.size()) << "bucket_bytes " << bucket_bytes;
    for (size_t i = 0; i < base.size(); ++i) EXPECT_EQ(replica[i], next[i].bytes) << "tensor " << i << " bucket_bytes " << bucket_bytes;
  }
}

// Without NCCL (or CUDA) every call says which is missing; with NCCL but no GPU, making a communicator
// fails as a device error instead of crashing.
TEST(GpuReference, BroadcastWithoutNcclOrDeviceSaysWhy) {
  auto v = gpu::nccl_version();
  if (v.ok()) {
    if (have_device()) GTEST_SKIP() << "NCCL " << *v << " and a GPU: the device tests cover it";
    const int device = 0;
    auto comms = gpu::Communicator::init_all({&device, 1});
    ASSERT_FALSE(comms.ok());
    EXPECT_EQ(comms.status().code(), ErrorCode::kDevice) << comms.status().to_string();
    return;
  }
  EXPECT_EQ(v.status().code(), ErrorCode::kUnsupported);
  EXPECT_FALSE(v.status().message().empty());
  gpu::Communicator none;
  EXPECT_EQ(gpu::broadcast_changes(none, 0, nullptr, {}).status().code(), ErrorCode::kUnsupported);
}

// ---- device tests ----


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
  gpu::DeviceChangeSet reused;
  gpu::HostChangeSet host;
  for (int round = 0; round < 3; ++round) {  // round 0 a fresh set; rounds 1 and 2 refill one set in place
    gpu::DeviceChangeSet fresh;
    if (round == 0) {
      auto r = differ.diff(inputs, nullptr);
      ASSERT_TRUE(r.ok()) << r.status().to_string();
      fresh = std::move(*r);
    } else {
      const Status st = differ.diff(inputs, nullptr, reused);
      ASSERT_TRUE(st.ok()) << st.to_string();
    }
    const gpu::DeviceChangeSet* changes = round == 0 ? &fresh : &reused;
    const Status copied = gpu::Differ::to_host(*changes, host, nullptr);
    ASSERT_TRUE(copied.ok()) << copied.to_string();
    ASSERT_EQ(host.tensors(), cases.size());
    uint64_t total = 0;
    for (size_t k = 0; k < cases.size(); ++k) {
      const Case& c = cases[k];
      const size_t w = dtype_size_bytes(c.dtype);
      const auto b = std::span<const std::byte>(c.base.bytes).subspan(c.misalign * w);
      const auto t = std::span<const std::byte>(c.next.bytes).subspan(c.misalign * w);
      const auto expected = *diff_elements(b, t, w, 1);
      const auto positions = host.positions(k);
      ASSERT_EQ(std::vector<uint64_t>(positions.begin(), positions.end()), expected) << c.what;
      ASSERT_EQ(host.base_values(k).size(), expected.size() * w);
      for (size_t i = 0; i < expected.size(); ++i) {
        ASSERT_EQ(std::memcmp(host.base_values(k).data() + i * w, b.data() + expected[i] * w, w), 0) << c.what;
        ASSERT_EQ(std::memcmp(host.target_values(k).data() + i * w, t.data() + expected[i] * w, w), 0) << c.what;
      }
      total += expected.size();
    }
    EXPECT_EQ(changes->total, total);
    EXPECT_EQ(host.total(), total);
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

// apply_changes batches chunks of at most kScatterChunk changes, 960 to a launch: many tensors (over
// 960 chunks, so several launches) and tensors of many chunks land exactly where the CPU diff says.
TEST(Gpu, ApplyChangesOverManyLaunchesMatchesTheCpu) {
  REQUIRE_DEVICE();
  std::mt19937_64 rng(76);
  std::vector<test::HostTensor> base, next;
  std::vector<gpu::DeviceBuffer> d_base, d_next, d_snap;
  for (int i = 0; i < 1100; ++i) {  // 1100 one-chunk tensors, then three of many chunks
    const DType dt = kAllDTypes[i % std::size(kAllDTypes)];
    base.push_back(test::random_tensor(rng, "t", dt, {257u + i % 7}));
    next.push_back(test::mutate(rng, base.back(), 0.3));
  }
  for (DType dt : {DType::kBF16, DType::kF32, DType::kU8}) {
    base.push_back(test::random_tensor(rng, "big", dt, {100000}));
    next.push_back(test::mutate(rng, base.back(), 0.5));  // ~50,000 changes: 13 chunks
  }
  std::vector<gpu::DiffInput> inputs;
  std::vector<gpu::DeviceTensor> views;
  for (size_t i = 0; i < base.size(); ++i) {
    d_base.push_back(upload(base[i].bytes));
    d_next.push_back(upload(next[i].bytes));
    d_snap.push_back(upload(base[i].bytes));
    const uint64_t numel = base[i].bytes.size() / dtype_size_bytes(base[i].dtype);
    inputs.push_back({d_base.back().data(), d_next.back().data(), base[i].dtype, numel});
    views.push_back({d_snap.back().data(), base[i].dtype, numel});
  }
  gpu::Differ differ;
  auto changes = differ.diff(inputs, nullptr);
  ASSERT_TRUE(changes.ok()) << changes.status().to_string();
  ASSERT_TRUE(gpu::apply_changes(views, *changes, nullptr).ok());
  for (size_t i = 0; i < base.size(); ++i) {
    ASSERT_EQ(download(d_snap[i].data(), next[i].bytes.size()), next[i].bytes) << "tensor " << i << " " << dtype_name(base[i].dtype);
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


// The NCCL transport on every GPU of the machine (one rank per GPU, one thread per rank): rank 0 diffs two
// steps and broadcasts them in small buckets (many buckets, tensors split across them, both slots reused);
// every rank, the root included (as a replica), must hold the target bit for bit after each step. On one
// GPU the root is its own receiver, which still runs every part: header, verdict, counts, buckets, scatter.
TEST(Gpu, NcclBroadcastKeepsEveryRankBitIdentical) {
  REQUIRE_DEVICE();
  auto version = gpu::nccl_version();
  if (!version.ok()) GTEST_SKIP() << version.status().to_string();
  const int ranks = *gpu::device_count();
  std::vector<int> devices(ranks);
  for (int i = 0; i < ranks; ++i) devices[i] = i;
  auto comms = gpu::Communicator::init_all(devices);
  ASSERT_TRUE(comms.ok()) << comms.status().to_string();
  std::mt19937_64 rng(78);
  std::vector<test::HostTensor> steps[3];
  for (int i = 0; i < 30; ++i) {
    const DType dt = kAllDTypes[(i * 5) % std::size(kAllDTypes)];
    steps[0].push_back(test::random_tensor(rng, "t", dt, {1u + static_cast<uint64_t>(rng() % 50000)}));
  }
  for (int k = 1; k < 3; ++k) {
    for (const auto& t : steps[k - 1]) steps[k].push_back(test::mutate(rng, t, k == 1 ? 0.01 : 0.3));
  }
  std::vector<std::string> failures(ranks);
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r) {
    threads.emplace_back([&, r] {
      auto fail = [&](const std::string& m) { failures[r] = m; };
      if (!gpu::set_device(r).ok()) return fail("set_device");
      std::vector<gpu::DeviceBuffer> replica, prev, cur;
      std::vector<gpu::DeviceTensor> views;
      for (const auto& t : steps[0]) {
        replica.push_back(upload(t.bytes));
        views.push_back({replica.back().data(), t.dtype, t.bytes.size() / dtype_size_bytes(t.dtype)});
      }
      gpu::Differ differ;
      gpu::DeviceChangeSet changes;
      for (int k = 1; k < 3; ++k) {
        if (r == 0) {
          prev.clear();
          cur.clear();
          std::vector<gpu::DiffInput> in;
          for (size_t i = 0; i < steps[k].size(); ++i) {
            prev.push_back(upload(steps[k - 1][i].bytes));
            cur.push_back(upload(steps[k][i].bytes));
            in.push_back({prev.back().data(), cur.back().data(), views[i].dtype, views[i].numel});
          }
          if (Status st = differ.diff(in, nullptr, changes); !st.ok()) return fail(st.to_string());
        }
        auto stats = gpu::broadcast_changes((*comms)[r], 0, r == 0 ? &changes : nullptr, views, {.bucket_bytes = 64 << 10});
        if (!stats.ok()) return fail(stats.status().to_string());
        if (stats->buckets < 2) return fail("expected several buckets, got " + std::to_string(stats->buckets));
        if (!gpu::synchronize(nullptr).ok()) return fail("sync");
        for (size_t i = 0; i < steps[k].size(); ++i) {
          if (download(replica[i].data(), steps[k][i].bytes.size()) != steps[k][i].bytes) {
            return fail("step " + std::to_string(k) + " tensor " + std::to_string(i) + " differs");
          }
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < ranks; ++r) EXPECT_EQ(failures[r], "") << "rank " << r;
}

TEST(Gpu, NcclBroadcastRefusesMismatchedTensorsOnEveryRankAndWritesNothing) {
  REQUIRE_DEVICE();
  if (!gpu::nccl_version().ok()) GTEST_SKIP() << "no NCCL";
  const int device = 0;
  auto comms = gpu::Communicator::init_all({&device, 1});
  ASSERT_TRUE(comms.ok()) << comms.status().to_string();
  std::mt19937_64 rng(79);
  auto a = test::random_tensor(rng, "a", DType::kBF16, {4096});
  auto b = test::mutate(rng, a, 0.1);
  gpu::DeviceBuffer da = upload(a.bytes), db = upload(b.bytes), replica = upload(a.bytes);
  gpu::Differ differ;
  const gpu::DiffInput in{da.data(), db.data(), DType::kBF16, 4096};
  auto changes = differ.diff({&in, 1}, nullptr);
  ASSERT_TRUE(changes.ok());
  const gpu::DeviceTensor wrong{replica.data(), DType::kBF16, 4095};
  auto st = gpu::broadcast_changes((*comms)[0], 0, &*changes, {&wrong, 1});
  EXPECT_EQ(st.status().code(), ErrorCode::kInvalidArgument) << st.status().to_string();
  EXPECT_EQ(download(replica.data(), a.bytes.size()), a.bytes);
  // The communicator is still usable after a refusal.
  const gpu::DeviceTensor right{replica.data(), DType::kBF16, 4096};
  auto ok = gpu::broadcast_changes((*comms)[0], 0, &*changes, {&right, 1});
  ASSERT_TRUE(ok.ok()) << ok.status().to_string();
  ASSERT_TRUE(gpu::synchronize(nullptr).ok());
  EXPECT_EQ(download(replica.data(), b.bytes.size()), b.bytes);
}

}  // namespace
}  // namespace dws
