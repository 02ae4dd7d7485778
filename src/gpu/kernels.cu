// kernels.cu — CUDA kernels of the GPU path and the runtime calls around them (see kernels.h).
//
// Diff, pass 1 (diff_mask_kernel): one block per tile of 16 KiB of each input. Each thread issues four
// 16-byte streaming loads of base and four of target before comparing (memory-level parallelism), turns
// each vector into one bit per element and ORs them into the tile's bitmask in shared memory, which is then
// written out with the tile's change count. Inputs are read exactly once.
// Scan: an exclusive sum over the tile counts (CUB) gives each tile's first output slot and the total.
// Pass 2 (diff_compact_kernel): one warp per tile with changes writes the tile's positions in ascending
// order, coalesced (consecutive changes to consecutive addresses); it reads only the bitmask (1/8 bit per
// input bit). Then gather_chunks_kernel reads the base and target values at the positions, element-parallel.
// Both passes are persistent kernels (one wave of resident blocks walking the tiles).
#include <cuda_runtime.h>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_scan.cuh>

#include <algorithm>
#include <memory>
#include <string>
#include <type_traits>

#include "codec/element_key.h"
#include "codec/native_symbols.h"
#include "gpu/cuda_status.h"
#include "gpu/kernels.h"

namespace dws::gpu::detail {

namespace {

constexpr int kThreads = 256;
constexpr int kVectorsPerThread = 4;
constexpr int kTileBytes = kThreads * kVectorsPerThread * 16;  // per input
constexpr int kMaskBlocksPerSM = 2;  // lets pass 1 use 128 registers a thread (4 per SM, at 64 and spilling, ran no faster on an H100)

template <int W>
struct Elem;
template <>
struct Elem<1> { using T = uint8_t; };
template <>
struct Elem<2> { using T = uint16_t; };
template <>
struct Elem<4> { using T = uint32_t; };
template <>
struct Elem<8> { using T = unsigned long long; };


cudaStream_t as_stream(Stream s) { return static_cast<cudaStream_t>(s); }

// One bit per element of a 16-byte vector pair: bit j set when element j differs.
template <int W>
__device__ __forceinline__ uint32_t vector_diff_bits(const uint4& a, const uint4& b) {
  const uint32_t x[4] = {a.x ^ b.x, a.y ^ b.y, a.z ^ b.z, a.w ^ b.w};
  uint32_t bits = 0;
#pragma unroll
  for (int j = 0; j < 16 / W; ++j) {
    uint32_t differs;
    if constexpr (W == 8) {
      differs = x[2 * j] | x[2 * j + 1];
    } else if constexpr (W == 4) {
      differs = x[j];
    } else {
      differs = (x[(j * W) / 4] >> (((j * W) % 4) * 8)) & ((1u << (8 * W)) - 1);
    }
    bits |= (differs != 0 ? 1u : 0u) << j;
  }
  return bits;
}

// The tensor a global tile belongs to: the last entry whose first_tile <= tile.
__device__ __forceinline__ uint32_t tensor_of_tile(const DiffTensor* table, uint32_t tensors, uint64_t tile) {
  uint32_t lo = 0, hi = tensors - 1;
  while (lo < hi) {
    const uint32_t mid = (lo + hi + 1) / 2;
    if (table[mid].first_tile <= tile) lo = mid; else hi = mid - 1;
  }
  return lo;
}

template <int W>
__device__ __forceinline__ void mask_tile(const DiffTensor& t, uint64_t local_tile, uint32_t* tile_mask,
                                          uint32_t* __restrict__ mask_out, unsigned long long* count_out) {
  constexpr int kPerVector = 16 / W;
  constexpr int kTileElems = kTileBytes / W;
  constexpr int kWords = kTileElems / 32;
  using Reduce = cub::BlockReduce<unsigned long long, kThreads>;
  __shared__ typename Reduce::TempStorage reduce_storage;
  const auto* base = static_cast<const uint8_t*>(t.base);
  const auto* target = static_cast<const uint8_t*>(t.target);
  const uint64_t first = local_tile * kTileElems;
  for (int i = threadIdx.x; i < kWords; i += kThreads) tile_mask[i] = 0;
  __syncthreads();

  uint4 a[kVectorsPerThread], b[kVectorsPerThread];
  bool whole[kVectorsPerThread];
#pragma unroll
  for (int k = 0; k < kVectorsPerThread; ++k) {
    const uint64_t e = first + static_cast<uint64_t>(k * kThreads + threadIdx.x) * kPerVector;
    whole[k] = t.vectorized && e + kPerVector <= t.numel;
    if (whole[k]) {
      a[k] = __ldcs(reinterpret_cast<const uint4*>(base + e * W));
      b[k] = __ldcs(reinterpret_cast<const uint4*>(target + e * W));
    }
  }
#pragma unroll
  for (int k = 0; k < kVectorsPerThread; ++k) {
    const int v = k * kThreads + threadIdx.x;
    const uint64_t e = first + static_cast<uint64_t>(v) * kPerVector;
    uint32_t bits = 0;
    if (whole[k]) {
      bits = vector_diff_bits<W>(a[k], b[k]);
    } else {
      for (int j = 0; j < kPerVector && e + j < t.numel; ++j) {
        bool differs = false;
        for (int byte = 0; byte < W; ++byte) differs |= base[(e + j) * W + byte] != target[(e + j) * W + byte];
        bits |= (differs ? 1u : 0u) << j;
      }
    }
    if (bits != 0) atomicOr(&tile_mask[(v * kPerVector) / 32], bits << ((v * kPerVector) % 32));
  }
  __syncthreads();
  unsigned long long count = 0;
  for (int i = threadIdx.x; i < kWords; i += kThreads) {
    const uint32_t word = tile_mask[i];
    mask_out[i] = word;
    count += __popc(word);
  }
  const unsigned long long total = Reduce(reduce_storage).Sum(count);
  if (threadIdx.x == 0) *count_out = total;
}

// Persistent: each block walks tiles blockIdx.x, +gridDim.x, ... so the tensor of its tile is found by
// one binary search and then by stepping forward.
__global__ void __launch_bounds__(kThreads, kMaskBlocksPerSM) diff_mask_kernel(const DiffTensor* __restrict__ table, uint32_t tensors,
                                                             uint64_t tiles, uint32_t* __restrict__ mask,
                                                             unsigned long long* __restrict__ counts) {
  __shared__ uint32_t tile_mask[kTileBytes / 32];  // one bit per element of the widest tile (1-byte elements)
  if (blockIdx.x == 0 && threadIdx.x == 0) counts[tiles] = 0;  // the scan's extra slot: its result is the total
  uint32_t i = tensor_of_tile(table, tensors, blockIdx.x);
  for (uint64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    while (i + 1 < tensors && table[i + 1].first_tile <= tile) ++i;
    const DiffTensor& t = table[i];
    const uint64_t local = tile - t.first_tile;
    const uint64_t words = static_cast<uint64_t>(kTileBytes / t.elem_size / 32);
    uint32_t* out = mask + t.first_word + local * words;
    switch (t.elem_size) {
      case 1: mask_tile<1>(t, local, tile_mask, out, counts + tile); break;
      case 2: mask_tile<2>(t, local, tile_mask, out, counts + tile); break;
      case 4: mask_tile<4>(t, local, tile_mask, out, counts + tile); break;
      default: mask_tile<8>(t, local, tile_mask, out, counts + tile); break;
    }
    __syncthreads();  // tile_mask and the reduction's storage are reused by the next tile
  }
}

__global__ void tensor_starts_kernel(const DiffTensor* __restrict__ table, uint32_t tensors, uint64_t tiles,
                                     const unsigned long long* __restrict__ offsets, unsigned long long* __restrict__ starts) {
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i <= tensors; i += gridDim.x * blockDim.x) {
    starts[i] = offsets[i < tensors ? table[i].first_tile : tiles];
  }
}

// One warp writes one tile's changed positions, coalesced: it reads 32 mask words at a time (one per lane),
// and for each non-zero word every lane whose bit is set writes its element's position at the word's output
// slot plus the number of set bits below it, so consecutive changes go to consecutive addresses. The values
// are gathered afterwards by gather_chunks_kernel, element-parallel.
template <int W>
__device__ __forceinline__ void compact_tile(uint64_t local_tile, const uint32_t* __restrict__ mask, uint64_t out,
                                             unsigned long long* __restrict__ positions) {
  constexpr int kTileElems = kTileBytes / W;
  constexpr int kWords = kTileElems / 32;
  static_assert(kWords % 32 == 0);
  constexpr int kRounds = kWords / 32;
  const uint32_t lane = threadIdx.x & 31;
  const uint32_t below = (1u << lane) - 1;
  uint32_t words[kRounds];  // all of the tile's mask loads are issued before any is used
#pragma unroll
  for (int r = 0; r < kRounds; ++r) words[r] = mask[r * 32 + lane];
#pragma unroll
  for (int r = 0; r < kRounds; ++r) {
    const uint32_t word = words[r];
    for (uint32_t nonzero = __ballot_sync(0xFFFFFFFFu, word != 0); nonzero != 0; nonzero &= nonzero - 1) {
      const int src = __ffs(nonzero) - 1;
      const uint32_t bits = __shfl_sync(0xFFFFFFFFu, word, src);
      if ((bits >> lane) & 1u) {
        positions[out + __popc(bits & below)] = local_tile * kTileElems + static_cast<uint64_t>(r * 32 + src) * 32 + lane;
      }
      out += __popc(bits);
    }
  }
}

// Persistent, one warp per tile: warp w of block k walks tiles k * warps + w, then + gridDim.x * warps, ...
// Each block first copies the tensors' first tiles into shared memory (dynamic, tensors * 8 bytes, when
// they fit in kCompactTableTensors), so finding a tile's tensor is a binary search in shared memory rather
// than a chain of dependent global loads across the tensors a warp's stride skips.
constexpr uint32_t kCompactTableTensors = 6144;  // 48 KiB of shared memory
__global__ void __launch_bounds__(kThreads) diff_compact_kernel(
    const DiffTensor* __restrict__ table, uint32_t tensors, uint64_t tiles, const uint32_t* __restrict__ mask,
    const unsigned long long* __restrict__ counts, const unsigned long long* __restrict__ offsets,
    unsigned long long* __restrict__ positions) {
  extern __shared__ unsigned long long first_tiles[];
  const bool in_shared = tensors <= kCompactTableTensors;
  if (in_shared) {
    for (uint32_t k = threadIdx.x; k < tensors; k += blockDim.x) first_tiles[k] = table[k].first_tile;
    __syncthreads();
  }
  constexpr uint32_t kWarps = kThreads / 32;
  const uint64_t first = static_cast<uint64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  for (uint64_t tile = first; tile < tiles; tile += static_cast<uint64_t>(gridDim.x) * kWarps) {
    if (counts[tile] == 0) continue;  // uniform across the warp
    uint32_t i;
    if (in_shared) {
      uint32_t lo = 0, hi = tensors - 1;  // the last tensor whose first tile <= tile
      while (lo < hi) {
        const uint32_t mid = (lo + hi + 1) / 2;
        if (first_tiles[mid] <= tile) lo = mid; else hi = mid - 1;
      }
      i = lo;
    } else {
      i = tensor_of_tile(table, tensors, tile);
    }
    const DiffTensor& t = table[i];
    const uint64_t local = tile - t.first_tile;
    const uint64_t words = static_cast<uint64_t>(kTileBytes / t.elem_size / 32);
    const uint32_t* m = mask + t.first_word + local * words;
    switch (t.elem_size) {
      case 1: compact_tile<1>(local, m, offsets[tile], positions); break;
      case 2: compact_tile<2>(local, m, offsets[tile], positions); break;
      case 4: compact_tile<4>(local, m, offsets[tile], positions); break;
      default: compact_tile<8>(local, m, offsets[tile], positions); break;
    }
  }
}

// Gathers the base and target values at the compacted positions: one block per chunk of at most
// kScatterChunk changes of one tensor, chunks passed as the kernel's parameters (as for scatters).
struct GatherChunk {
  const void* base;
  const void* target;
  const unsigned long long* positions;
  void* base_out;
  void* target_out;
  uint32_t count;
  uint32_t elem_size;
};
constexpr uint32_t kGatherChunksPerLaunch = 640;
struct GatherBatch {
  GatherChunk chunks[kGatherChunksPerLaunch];
};
static_assert(sizeof(GatherBatch) < 32000, "kernel parameters are limited to 32 KB");

template <int W>
__device__ __forceinline__ void gather_chunk(const GatherChunk& c) {
  using T = typename Elem<W>::T;
  const T* __restrict__ b = static_cast<const T*>(c.base);
  const T* __restrict__ g = static_cast<const T*>(c.target);
  T* bo = static_cast<T*>(c.base_out);
  T* to = static_cast<T*>(c.target_out);
  for (uint32_t i = threadIdx.x; i < c.count; i += blockDim.x) {
    const uint64_t p = c.positions[i];
    bo[i] = __ldg(b + p);
    to[i] = __ldg(g + p);
  }
}

__global__ void __launch_bounds__(kThreads) gather_chunks_kernel(const __grid_constant__ GatherBatch batch) {
  const GatherChunk& c = batch.chunks[blockIdx.x];
  switch (c.elem_size) {
    case 1: gather_chunk<1>(c); break;
    case 2: gather_chunk<2>(c); break;
    case 4: gather_chunk<4>(c); break;
    default: gather_chunk<8>(c); break;
  }
}

template <int W, codec::ChangeOp kOp, bool kFloat>
__global__ void scatter_kernel(uint8_t* __restrict__ tensor, const unsigned long long* __restrict__ positions,
                               const uint8_t* __restrict__ operands, uint64_t n) {
  using T = typename Elem<W>::T;
  T* out = reinterpret_cast<T*>(tensor);
  for (uint64_t i = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
    const uint64_t p = positions[i];
    if constexpr (kOp == codec::ChangeOp::kSet) {
      out[p] = reinterpret_cast<const T*>(operands)[i];
    } else if constexpr (kOp == codec::ChangeOp::kXor) {
      out[p] ^= reinterpret_cast<const T*>(operands)[i];
    } else {
      const uint64_t zz = reinterpret_cast<const unsigned long long*>(operands)[i];
      out[p] = static_cast<T>(codec::native::add_key_distance<W, kFloat>(static_cast<uint64_t>(out[p]), zz));
    }
  }
}

template <int W, codec::ChangeOp kOp, bool kFloat>
__device__ __forceinline__ void scatter_chunk(const ScatterChunk& c) {
  using T = typename Elem<W>::T;
  T* out = static_cast<T*>(c.tensor);
  const auto* positions = reinterpret_cast<const unsigned long long*>(c.positions);
  for (uint32_t i = threadIdx.x; i < c.count; i += blockDim.x) {
    const uint64_t p = positions[i];
    if constexpr (kOp == codec::ChangeOp::kSet) {
      out[p] = static_cast<const T*>(c.operands)[i];
    } else if constexpr (kOp == codec::ChangeOp::kXor) {
      out[p] ^= static_cast<const T*>(c.operands)[i];
    } else {
      const uint64_t zz = static_cast<const unsigned long long*>(c.operands)[i];
      out[p] = static_cast<T>(codec::native::add_key_distance<W, kFloat>(static_cast<uint64_t>(out[p]), zz));
    }
  }
}

template <int W>
__device__ __forceinline__ void scatter_chunk_op(const ScatterChunk& c) {
  switch (static_cast<codec::ChangeOp>(c.op)) {
    case codec::ChangeOp::kSet: scatter_chunk<W, codec::ChangeOp::kSet, false>(c); break;
    case codec::ChangeOp::kXor: scatter_chunk<W, codec::ChangeOp::kXor, false>(c); break;
    case codec::ChangeOp::kAddKey:
      if (c.is_float) scatter_chunk<W, codec::ChangeOp::kAddKey, true>(c); else scatter_chunk<W, codec::ChangeOp::kAddKey, false>(c);
      break;
  }
}

// A batch of chunks passed by value as the kernel's parameter (up to 32 KB of parameters on Volta and later
// with CUDA 12.1+), so that a scatter needs no upload and no synchronization: fully stream-ordered.
constexpr uint32_t kChunksPerLaunch = 960;
struct ScatterBatch {
  ScatterChunk chunks[kChunksPerLaunch];
};
static_assert(sizeof(ScatterBatch) < 32000, "kernel parameters are limited to 32 KB");

// One block per chunk; the chunk's width and operation are uniform across the block.
__global__ void __launch_bounds__(kThreads) scatter_chunks_kernel(const __grid_constant__ ScatterBatch batch) {
  const ScatterChunk& c = batch.chunks[blockIdx.x];
  switch (c.elem_size) {
    case 1: scatter_chunk_op<1>(c); break;
    case 2: scatter_chunk_op<2>(c); break;
    case 4: scatter_chunk_op<4>(c); break;
    default: scatter_chunk_op<8>(c); break;
  }
}

constexpr uint32_t kWordChunksPerLaunch = 790;  // 40-byte chunks
struct WordGatherBatch {
  WordGatherChunk chunks[kWordChunksPerLaunch];
};
static_assert(sizeof(WordGatherBatch) < 32000, "kernel parameters are limited to 32 KB");

// One block per chunk. A whole word of an 8-aligned tensor is one load; otherwise (a tensor view at an odd
// offset, or the partial last word) byte loads, zero past the end.
__global__ void __launch_bounds__(kThreads) gather_words_kernel(const __grid_constant__ WordGatherBatch batch) {
  const WordGatherChunk& c = batch.chunks[blockIdx.x];
  const auto* bytes = static_cast<const uint8_t*>(c.tensor);
  const bool aligned = reinterpret_cast<uintptr_t>(bytes) % 8 == 0;
  for (uint32_t i = threadIdx.x; i < c.count; i += blockDim.x) {
    const uint64_t first = c.indices[i] * 8;
    uint64_t word = 0;
    if (aligned && first + 8 <= c.tensor_bytes) {
      word = *reinterpret_cast<const unsigned long long*>(bytes + first);
    } else {
      for (uint64_t b = 0; b < 8 && first + b < c.tensor_bytes; ++b) word |= static_cast<uint64_t>(bytes[first + b]) << (8 * b);
    }
    c.words[i] = word;
  }
}

// ---- the native codec's per-change half (codec/native_symbols.h) ----

constexpr uint32_t kSymbolChunksPerLaunch = 390;  // 80-byte chunks
struct SymbolBatch {
  SymbolChunk chunks[kSymbolChunksPerLaunch];
};
static_assert(sizeof(SymbolBatch) < 32000, "kernel parameters are limited to 32 KB");
constexpr uint32_t kSymbolsPerThread = kSymbolChunk / kThreads;
static_assert(kSymbolsPerThread * kThreads == kSymbolChunk, "a thread packs a whole run of a chunk");

// The gap before change i of the chunk (layout 1: the position itself for a tensor's first change).
__device__ __forceinline__ uint64_t chunk_gap(const SymbolChunk& c, uint32_t i) {
  const uint64_t p = c.positions[i];
  return i == 0 && c.tensor_start ? p : p - c.positions[static_cast<int64_t>(i) - 1] - 1;
}

template <int W, bool kFloat>
__device__ __forceinline__ uint64_t chunk_distance(const SymbolChunk& c, uint32_t i) {
  using T = typename Elem<W>::T;
  return codec::native::zigzag_key_distance<W, kFloat>(static_cast<uint64_t>(static_cast<const T*>(c.base_values)[i]),
                                                        static_cast<uint64_t>(static_cast<const T*>(c.target_values)[i]));
}

// Mantissa bits in the high 32 bits, escapes in the low 32 (a chunk has at most 4096 * 63 bits).
__device__ __forceinline__ unsigned long long bits_and_escape(uint32_t gap_length, uint64_t distance) {
  return (static_cast<unsigned long long>(codec::native::gap_mantissa_bits(gap_length)) << 32) |
         (distance >= codec::native::kEscapeSymbol ? 1ull : 0ull);
}

template <int W, bool kFloat>
__device__ __forceinline__ void symbolize_chunk(const SymbolChunk& c) {
  using Reduce = cub::BlockReduce<unsigned long long, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  unsigned long long sum = 0;
  for (uint32_t i = threadIdx.x; i < c.count; i += blockDim.x) {
    const uint32_t len = codec::native::gap_bit_length(chunk_gap(c, i));
    const uint64_t z = chunk_distance<W, kFloat>(c, i);
    c.gap_lengths[i] = static_cast<uint8_t>(len);
    c.values[i] = static_cast<uint8_t>(z < codec::native::kEscapeSymbol ? z : codec::native::kEscapeSymbol);
    sum += bits_and_escape(len, z);
  }
  const unsigned long long total = Reduce(storage).Sum(sum);
  if (threadIdx.x == 0) {
    c.counts[0] = static_cast<uint32_t>(total >> 32);
    c.counts[1] = static_cast<uint32_t>(total & 0xFFFFFFFFull);
  }
}

// ORs the low `bits` (1..63) of value into the bit stream at bit `at`.
__device__ __forceinline__ void or_bits(unsigned long long* words, uint64_t at, uint64_t value, uint32_t bits) {
  const uint64_t w = at / 64;
  const uint32_t s = static_cast<uint32_t>(at % 64);
  atomicOr(words + w, static_cast<unsigned long long>(value << s));
  if (s + bits > 64) atomicOr(words + w + 1, static_cast<unsigned long long>(value >> (64 - s)));
}

template <int W, bool kFloat>
__device__ __forceinline__ void pack_chunk(const SymbolChunk& c) {
  using Scan = cub::BlockScan<unsigned long long, kThreads>;
  __shared__ typename Scan::TempStorage storage;
  const uint32_t begin = min(threadIdx.x * kSymbolsPerThread, c.count);
  const uint32_t end = min(begin + kSymbolsPerThread, c.count);
  unsigned long long mine = 0;
  for (uint32_t i = begin; i < end; ++i) mine += bits_and_escape(codec::native::gap_bit_length(chunk_gap(c, i)), chunk_distance<W, kFloat>(c, i));
  unsigned long long offset = 0;
  Scan(storage).ExclusiveSum(mine, offset);
  uint64_t bit = c.first_bit + (offset >> 32);
  uint64_t escape = offset & 0xFFFFFFFFull;
  for (uint32_t i = begin; i < end; ++i) {
    const uint64_t gap = chunk_gap(c, i);
    const uint32_t m = codec::native::gap_mantissa_bits(codec::native::gap_bit_length(gap));
    if (m > 0) {
      or_bits(c.words, bit, gap & ((1ull << m) - 1), m);
      bit += m;
    }
    const uint64_t z = chunk_distance<W, kFloat>(c, i);
    if (z >= codec::native::kEscapeSymbol) c.escapes[escape++] = z - codec::native::kEscapeSymbol;
  }
}

template <bool kPack, int W, bool kFloat>
__device__ __forceinline__ void symbol_chunk(const SymbolChunk& c) {
  if constexpr (kPack) pack_chunk<W, kFloat>(c); else symbolize_chunk<W, kFloat>(c);
}

template <bool kPack>
__global__ void __launch_bounds__(kThreads) symbol_chunks_kernel(const __grid_constant__ SymbolBatch batch) {
  const SymbolChunk& c = batch.chunks[blockIdx.x];
  const bool f = c.is_float != 0;
  switch (c.elem_size) {
    case 1: f ? symbol_chunk<kPack, 1, true>(c) : symbol_chunk<kPack, 1, false>(c); break;
    case 2: f ? symbol_chunk<kPack, 2, true>(c) : symbol_chunk<kPack, 2, false>(c); break;
    case 4: f ? symbol_chunk<kPack, 4, true>(c) : symbol_chunk<kPack, 4, false>(c); break;
    default: f ? symbol_chunk<kPack, 8, true>(c) : symbol_chunk<kPack, 8, false>(c); break;
  }
}

// Resident blocks of `kernel` on the whole device, cached per kernel by the caller.
template <typename Kernel>
unsigned persistent_grid(Kernel kernel, size_t dynamic_smem = 0) {
  int device = 0, sms = 1, per_sm = 1;
  if (cudaGetDevice(&device) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, dynamic_smem) != cudaSuccess) {
    (void)cudaGetLastError();
    return 1024;
  }
  return static_cast<unsigned>(std::max(sms, 1) * std::max(per_sm, 1));
}

int multiprocessors() {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    return 1;
  }
  return std::max(sms, 1);
}

// Calls fn.template operator()<W>() for an element width of 1, 2, 4 or 8 bytes.
template <typename Fn>
Status by_width(size_t w, Fn&& fn) {
  switch (w) {
    case 1: return fn.template operator()<1>();
    case 2: return fn.template operator()<2>();
    case 4: return fn.template operator()<4>();
    case 8: return fn.template operator()<8>();
    default: return make_error(ErrorCode::kInvalidArgument, "element width " + std::to_string(w) + " is not 1, 2, 4 or 8");
  }
}

}  // namespace

bool available() { return true; }

Status device_count(int* count) {
  const cudaError_t e = cudaGetDeviceCount(count);
  if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver) {
    *count = 0;
    (void)cudaGetLastError();
    return Status::Ok();
  }
  DWS_CUDA(e);
  return Status::Ok();
}

Status device_info(int ordinal, DeviceInfo* info) {
  cudaDeviceProp p{};
  DWS_CUDA(cudaGetDeviceProperties(&p, ordinal));
  info->ordinal = ordinal;
  info->name = p.name;
  info->multiprocessors = p.multiProcessorCount;
  info->memory_bytes = p.totalGlobalMem;
  info->compute_major = p.major;
  info->compute_minor = p.minor;
  return Status::Ok();
}

Status set_device(int ordinal) {
  DWS_CUDA(cudaSetDevice(ordinal));
  return Status::Ok();
}

Status malloc_device(void** ptr, uint64_t bytes) {
  DWS_CUDA(cudaMalloc(ptr, std::max<uint64_t>(bytes, 1)));
  return Status::Ok();
}
void free_device(void* ptr) { (void)cudaFree(ptr); }

Status malloc_pinned(void** ptr, uint64_t bytes) {
  DWS_CUDA(cudaMallocHost(ptr, std::max<uint64_t>(bytes, 1)));
  return Status::Ok();
}
void free_pinned(void* ptr) { (void)cudaFreeHost(ptr); }

Status copy_async(void* dst, const void* src, uint64_t bytes, Stream stream) {
  if (bytes == 0) return Status::Ok();
  DWS_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, as_stream(stream)));
  return Status::Ok();
}

Status sync(Stream stream) {
  DWS_CUDA(cudaStreamSynchronize(as_stream(stream)));
  return Status::Ok();
}

uint64_t diff_tile_elems(size_t elem_size) { return kTileBytes / elem_size; }

namespace {
uint64_t round_up(uint64_t bytes) { return (bytes + 255) / 256 * 256; }

struct DiffScratch {
  DiffTensor* table;
  uint32_t* mask;
  unsigned long long* counts;
  unsigned long long* offsets;
  unsigned long long* starts;
  void* scan;
};

DiffScratch carve(void* scratch, const DiffPlan& plan) {
  auto* p = static_cast<uint8_t*>(scratch);
  DiffScratch s{};
  s.table = reinterpret_cast<DiffTensor*>(p);
  p += plan.table_bytes;
  s.mask = reinterpret_cast<uint32_t*>(p);
  p += plan.mask_bytes;
  s.counts = reinterpret_cast<unsigned long long*>(p);
  p += plan.counts_bytes;
  s.offsets = reinterpret_cast<unsigned long long*>(p);
  p += plan.counts_bytes;
  s.starts = reinterpret_cast<unsigned long long*>(p);
  p += plan.starts_bytes;
  s.scan = p;
  return s;
}
}  // namespace

DiffPlan diff_plan(uint64_t tensors, uint64_t tiles, uint64_t mask_words) {
  DiffPlan plan;
  plan.tensors = tensors;
  plan.tiles = tiles;
  plan.mask_words = mask_words;
  plan.table_bytes = round_up(tensors * sizeof(DiffTensor));
  plan.mask_bytes = round_up(mask_words * sizeof(uint32_t));
  plan.counts_bytes = round_up((tiles + 1) * sizeof(unsigned long long));
  plan.starts_bytes = round_up((tensors + 1) * sizeof(unsigned long long));
  size_t scan = 0;
  (void)cub::DeviceScan::ExclusiveSum(nullptr, scan, static_cast<unsigned long long*>(nullptr),
                                      static_cast<unsigned long long*>(nullptr), static_cast<int64_t>(tiles + 1));
  plan.scan_bytes = round_up(scan);
  return plan;
}

Status diff_count(const DiffTensor* table, const DiffPlan& plan, void* scratch, uint64_t* starts, Stream stream) {
  if (plan.tiles == 0) {
    for (uint64_t i = 0; i <= plan.tensors; ++i) starts[i] = 0;
    return Status::Ok();
  }
  if (plan.tiles > 0x7FFFFFFFull || plan.tensors > 0xFFFFFFFFull) {
    return make_error(ErrorCode::kInvalidArgument, "diff: " + std::to_string(plan.tiles) + " tiles exceed one launch");
  }
  const DiffScratch s = carve(scratch, plan);
  cudaStream_t st = as_stream(stream);
  DWS_CUDA(cudaMemcpyAsync(s.table, table, plan.tensors * sizeof(DiffTensor), cudaMemcpyHostToDevice, st));
  static const unsigned mask_grid = persistent_grid(diff_mask_kernel);
  diff_mask_kernel<<<static_cast<unsigned>(std::min<uint64_t>(plan.tiles, mask_grid)), kThreads, 0, st>>>(
      s.table, static_cast<uint32_t>(plan.tensors), plan.tiles, s.mask, s.counts);
  DWS_CUDA(cudaGetLastError());
  size_t scan_bytes = 0;
  DWS_CUDA(cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, s.counts, s.offsets, static_cast<int64_t>(plan.tiles + 1), st));
  if (scan_bytes > plan.scan_bytes) {
    return make_error(ErrorCode::kDevice, "diff: the scan needs " + std::to_string(scan_bytes) + " bytes of scratch, the plan has " +
                                              std::to_string(plan.scan_bytes));
  }
  scan_bytes = plan.scan_bytes;
  DWS_CUDA(cub::DeviceScan::ExclusiveSum(s.scan, scan_bytes, s.counts, s.offsets, static_cast<int64_t>(plan.tiles + 1), st));
  tensor_starts_kernel<<<static_cast<unsigned>((plan.tensors + 1 + kThreads - 1) / kThreads), kThreads, 0, st>>>(
      s.table, static_cast<uint32_t>(plan.tensors), plan.tiles, s.offsets, s.starts);
  DWS_CUDA(cudaGetLastError());
  DWS_CUDA(cudaMemcpyAsync(starts, s.starts, (plan.tensors + 1) * sizeof(uint64_t), cudaMemcpyDeviceToHost, st));
  DWS_CUDA(cudaStreamSynchronize(st));
  return Status::Ok();
}

Status diff_compact(const DiffTensor* table, const DiffPlan& plan, void* scratch, const uint64_t* starts, uint64_t* positions,
                    void* base_values, void* target_values, Stream stream) {
  if (plan.tiles == 0) return Status::Ok();
  const DiffScratch s = carve(scratch, plan);
  cudaStream_t st = as_stream(stream);
  DWS_CUDA(cudaMemcpyAsync(s.table, table, plan.tensors * sizeof(DiffTensor), cudaMemcpyHostToDevice, st));
  const size_t table_smem = plan.tensors <= kCompactTableTensors ? plan.tensors * sizeof(unsigned long long) : 0;
  const unsigned compact_grid = persistent_grid(diff_compact_kernel, table_smem);
  const uint64_t compact_blocks = (plan.tiles + kThreads / 32 - 1) / (kThreads / 32);
  diff_compact_kernel<<<static_cast<unsigned>(std::min<uint64_t>(compact_blocks, compact_grid)), kThreads, table_smem, st>>>(
      s.table, static_cast<uint32_t>(plan.tensors), plan.tiles, s.mask, s.counts, s.offsets,
      reinterpret_cast<unsigned long long*>(positions));
  DWS_CUDA(cudaGetLastError());
  // Values, element-parallel over the positions just written.
  auto batch = std::make_unique<GatherBatch>();
  uint32_t n = 0;
  auto flush = [&]() -> Status {
    if (n == 0) return Status::Ok();
    gather_chunks_kernel<<<n, kThreads, 0, st>>>(*batch);
    n = 0;
    DWS_CUDA(cudaGetLastError());
    return Status::Ok();
  };
  for (uint64_t k = 0; k < plan.tensors; ++k) {
    const DiffTensor& t = table[k];
    const uint64_t first = starts[k], count = starts[k + 1] - starts[k];
    for (uint64_t done = 0; done < count; done += kScatterChunk) {
      GatherChunk& c = batch->chunks[n++];
      c.base = t.base;
      c.target = t.target;
      c.positions = reinterpret_cast<const unsigned long long*>(positions) + first + done;
      c.base_out = static_cast<uint8_t*>(base_values) + t.value_byte + done * t.elem_size;
      c.target_out = static_cast<uint8_t*>(target_values) + t.value_byte + done * t.elem_size;
      c.count = static_cast<uint32_t>(std::min<uint64_t>(count - done, kScatterChunk));
      c.elem_size = t.elem_size;
      if (n == kGatherChunksPerLaunch) DWS_RETURN_IF_ERROR(flush());
    }
  }
  return flush();
}

Status scatter(void* tensor, DType dtype, codec::ChangeOp op, const uint64_t* positions, const void* operands,
               uint64_t n, Stream stream) {
  if (n == 0) return Status::Ok();
  const uint64_t wanted = (n + kThreads - 1) / kThreads;
  const unsigned blocks = static_cast<unsigned>(std::min<uint64_t>(wanted, static_cast<uint64_t>(multiprocessors()) * 16));
  const bool is_float = dtype_is_float(dtype);
  auto* t = static_cast<uint8_t*>(tensor);
  const auto* p = reinterpret_cast<const unsigned long long*>(positions);
  const auto* o = static_cast<const uint8_t*>(operands);
  return by_width(dtype_size_bytes(dtype), [&]<int W>() -> Status {
    cudaStream_t s = as_stream(stream);
    switch (op) {
      case codec::ChangeOp::kSet: scatter_kernel<W, codec::ChangeOp::kSet, false><<<blocks, kThreads, 0, s>>>(t, p, o, n); break;
      case codec::ChangeOp::kXor: scatter_kernel<W, codec::ChangeOp::kXor, false><<<blocks, kThreads, 0, s>>>(t, p, o, n); break;
      case codec::ChangeOp::kAddKey:
        if (is_float) {
          scatter_kernel<W, codec::ChangeOp::kAddKey, true><<<blocks, kThreads, 0, s>>>(t, p, o, n);
        } else {
          scatter_kernel<W, codec::ChangeOp::kAddKey, false><<<blocks, kThreads, 0, s>>>(t, p, o, n);
        }
        break;
    }
    DWS_CUDA(cudaGetLastError());
    return Status::Ok();
  });
}

namespace {
// Launches `kernel` with one block per chunk, Batch's capacity of chunks at a time, each batch passed by value
// as the kernel's parameter: nothing uploaded, nothing waited for.
template <typename Batch, typename Chunk>
Status launch_batches(void (*kernel)(const Batch), const Chunk* chunks, uint64_t n, Stream stream) {
  constexpr uint64_t kCapacity = std::extent_v<decltype(Batch::chunks)>;
  for (uint64_t first = 0; first < n; first += kCapacity) {
    auto batch = std::make_unique<Batch>();
    const auto count = static_cast<uint32_t>(std::min<uint64_t>(n - first, kCapacity));
    std::copy(chunks + first, chunks + first + count, batch->chunks);
    kernel<<<count, kThreads, 0, as_stream(stream)>>>(*batch);
    DWS_CUDA(cudaGetLastError());
  }
  return Status::Ok();
}
}  // namespace

Status scatter_chunks(const ScatterChunk* chunks, uint64_t n, Stream stream) {
  return launch_batches(scatter_chunks_kernel, chunks, n, stream);
}
Status gather_words(const WordGatherChunk* chunks, uint64_t n, Stream stream) {
  return launch_batches(gather_words_kernel, chunks, n, stream);
}
Status symbolize_chunks(const SymbolChunk* chunks, uint64_t n, Stream stream) {
  return launch_batches(symbol_chunks_kernel<false>, chunks, n, stream);
}
Status pack_chunks(const SymbolChunk* chunks, uint64_t n, Stream stream) {
  return launch_batches(symbol_chunks_kernel<true>, chunks, n, stream);
}

Status memset_async(void* dst, int value, uint64_t bytes, Stream stream) {
  if (bytes == 0) return Status::Ok();
  DWS_CUDA(cudaMemsetAsync(dst, value, bytes, as_stream(stream)));
  return Status::Ok();
}

}  // namespace dws::gpu::detail
