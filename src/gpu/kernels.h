// kernels.h — the CUDA side of dws::gpu behind a CUDA-free interface (internal).
//
// kernels.cu implements it when the build has CUDA; kernels_stub.cc otherwise, returning E_UNSUPPORTED.
// Every function that can fail returns E_DEVICE with the CUDA error's name and the call that failed.
#pragma once

#include <cstdint>
#include <vector>

#include "codec/codecs.h"
#include "dws/gpu.h"

namespace dws::gpu::detail {

inline constexpr const char* kNoCuda = "built without CUDA (configure with the CUDA toolkit and -DDWS_CUDA=ON)";

bool available();
Status device_count(int* count);
Status device_info(int ordinal, DeviceInfo* info);
Status set_device(int ordinal);

Status malloc_device(void** ptr, uint64_t bytes);
void free_device(void* ptr);
Status malloc_pinned(void** ptr, uint64_t bytes);
void free_pinned(void* ptr);
Status copy_async(void* dst, const void* src, uint64_t bytes, Stream stream);
Status sync(Stream stream);

// A diff of many tensors runs as one launch per pass over all their tiles (16 KiB of each input per tile).
// The host builds this table; the kernels find a tile's tensor by binary search over first_tile.
struct DiffTensor {
  const void* base = nullptr;
  const void* target = nullptr;
  uint64_t numel = 0;
  uint64_t first_tile = 0;   // global index of the tensor's first tile
  uint64_t first_word = 0;   // its first 32-bit word in the bitmask
  uint64_t value_byte = 0;   // where its values start in the value arrays, 8-aligned (set between the passes)
  uint32_t elem_size = 0;
  uint32_t vectorized = 0;   // both inputs 16-byte aligned
};

uint64_t diff_tile_elems(size_t elem_size);  // elements per tile

// Scratch of a diff over `tiles` tiles and `mask_words` bitmask words of `tensors` tensors.
struct DiffPlan {
  uint64_t tensors = 0;
  uint64_t tiles = 0;
  uint64_t mask_words = 0;
  uint64_t table_bytes = 0;   // the DiffTensor table
  uint64_t mask_bytes = 0;
  uint64_t counts_bytes = 0;  // per tile, plus one so that the exclusive scan's last entry is the total
  uint64_t starts_bytes = 0;  // per tensor plus one: index of its first change
  uint64_t scan_bytes = 0;
  uint64_t total_bytes() const { return table_bytes + mask_bytes + 2 * counts_bytes + starts_bytes + scan_bytes; }
};
DiffPlan diff_plan(uint64_t tensors, uint64_t tiles, uint64_t mask_words);

// Pass 1 and the scan over all tensors: uploads the table, fills the scratch and writes each tensor's first
// change index (tensors + 1 entries, the last = all changes) to host `starts`; synchronizes.
Status diff_count(const DiffTensor* table, const DiffPlan& plan, void* scratch, uint64_t* starts, Stream stream);
// Pass 2: with value_byte now set in `table`, writes every tensor's ascending positions (tensor-local) and
// the base and target values there into arrays sized by diff_count's totals.
// `starts` is diff_count's output (host).
Status diff_compact(const DiffTensor* table, const DiffPlan& plan, void* scratch, const uint64_t* starts, uint64_t* positions,
                    void* base_values, void* target_values, Stream stream);

// tensor[positions[i]] = op(tensor[positions[i]], operands[i]) for i < n; positions are unique and in
// range (the caller validated them). Matches codec::apply_operands bit for bit.
Status scatter(void* tensor, DType dtype, codec::ChangeOp op, const uint64_t* positions, const void* operands,
               uint64_t n, Stream stream);

// Many scatters in one launch: one block per chunk of at most kScatterChunk changes, each chunk within one
// tensor. The pointers in the chunks are device pointers; `chunks` itself is host memory, passed to the
// kernel as its parameters (960 chunks a launch), so nothing is uploaded and nothing waits. Asynchronous.
inline constexpr uint32_t kScatterChunk = 4096;
struct ScatterChunk {
  void* tensor = nullptr;
  const uint64_t* positions = nullptr;  // this chunk's first position
  const void* operands = nullptr;       // this chunk's first operand
  uint32_t count = 0;                   // 1..kScatterChunk
  uint8_t elem_size = 0;                // 1, 2, 4 or 8
  uint8_t op = 0;                       // codec::ChangeOp
  uint8_t is_float = 0;                 // for kAddKey: the float key mapping
};
Status scatter_chunks(const ScatterChunk* chunks, uint64_t n, Stream stream);
// Appends the chunks of one scatter (as `scatter` takes it) to `out`.
void add_scatter_chunks(void* tensor, DType dtype, codec::ChangeOp op, const uint64_t* positions, const void* operands,
                        uint64_t n, std::vector<ScatterChunk>& out);

// words[i] = little-endian 8-byte word indices[i] of a tensor of tensor_bytes bytes at `tensor` (zero-padded
// past its end; any alignment), for O(changes) digests (changed_words.h). One block per chunk; `chunks` is
// host memory passed as kernel parameters, the pointers in it device pointers. Asynchronous.
struct WordGatherChunk {
  const void* tensor = nullptr;
  uint64_t tensor_bytes = 0;
  const uint64_t* indices = nullptr;  // this chunk's first word index
  uint64_t* words = nullptr;          // where its words go
  uint32_t count = 0;                 // 1..kScatterChunk
};
Status gather_words(const WordGatherChunk* chunks, uint64_t n, Stream stream);

// The native codec's per-change half (codec/native_symbols.h) in two launches over chunks of at most
// kSymbolChunk changes of one tensor (one block each; `chunks` is host memory passed as kernel parameters,
// the pointers in it device pointers):
//   symbolize_chunks writes each change's gap length and value symbol and the chunk's totals (mantissa bits,
//   escapes) to counts[0..1];
//   pack_chunks then writes each gap's mantissa bits, LSB-first from bit first_bit of `words` (zeroed by the
//   caller; chunks of one tensor share words, set with atomic ORs), and each escape (z - 255) from `escapes`.
// A thread takes kSymbolChunk / 256 consecutive changes, its offsets an exclusive scan over the block.
inline constexpr uint32_t kSymbolChunk = 4096;
struct SymbolChunk {
  const uint64_t* positions = nullptr;  // the chunk's first position; positions[-1] is the previous change's unless tensor_start
  const void* base_values = nullptr;    // the chunk's first base value
  const void* target_values = nullptr;
  uint8_t* gap_lengths = nullptr;       // out: the chunk's first gap length
  uint8_t* values = nullptr;            // out: the chunk's first value symbol
  uint32_t* counts = nullptr;           // out (symbolize): the chunk's mantissa bits, then its escapes
  unsigned long long* words = nullptr;  // out (pack): the tensor's mantissa section, as 64-bit words
  uint64_t first_bit = 0;               // (pack) the chunk's first mantissa bit within the tensor's section
  uint64_t* escapes = nullptr;          // out (pack): the chunk's first escape
  uint32_t count = 0;                   // 1..kSymbolChunk
  uint8_t elem_size = 0;                // 1, 2, 4 or 8
  uint8_t is_float = 0;
  uint8_t tensor_start = 0;             // the chunk starts its tensor's changes (its first gap is its position)
};
Status symbolize_chunks(const SymbolChunk* chunks, uint64_t n, Stream stream);
Status pack_chunks(const SymbolChunk* chunks, uint64_t n, Stream stream);
Status memset_async(void* dst, int value, uint64_t bytes, Stream stream);

}  // namespace dws::gpu::detail
