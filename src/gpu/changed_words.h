// changed_words.h — O(changes) tensor digests for tensors the host cannot read whole (internal).
//
// A tensor digest sums one hash per little-endian 8-byte word of the tensor (the last word zero-padded;
// dws/digest.h). Changing elements changes only the words that hold them, so the digest of the result is
// known from those words alone: the old word and the new word of each. For a tensor on the device, the
// host learns the old words from one gather (detail::gather_words) and builds the new ones itself.
// Elements are 1, 2, 4 or 8 bytes wide, so an element never straddles two words.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "dws/digest.h"

namespace dws::gpu::detail {

class ChangedWords {
 public:
  // The words holding the elements at `positions` (strictly ascending) of a tensor of elem_size-byte
  // elements. Keeps a view of `positions`: it must outlive this object.
  ChangedWords(std::span<const uint64_t> positions, size_t elem_size);

  // Word indices, unique and ascending: what to gather.
  std::span<const uint64_t> indices() const { return indices_; }
  // The old words, one per index; the caller fills them (gather_words on the device, read_words here).
  std::span<uint64_t> words() { return words_; }
  std::span<const uint64_t> words() const { return words_; }

  // The current value of each position (positions.size() * elem_size bytes), taken from words().
  void read_values(std::span<std::byte> values) const;
  // digest(after) - digest(before) when every position takes its value from `new_values` (positions.size()
  // * elem_size bytes) and every other element keeps its value.
  Digest128 delta(const TensorSeed& seed, std::span<const std::byte> new_values) const;

 private:
  std::span<const uint64_t> positions_;
  size_t elem_size_;
  std::vector<uint64_t> indices_;
  std::vector<uint64_t> words_;
  std::vector<uint64_t> slot_;  // per position: its word's index in indices_
};

// The CPU reference of gather_words: words[i] = little-endian word indices[i] of `tensor`, zero-padded past
// its end.
void read_words(std::span<const std::byte> tensor, std::span<const uint64_t> indices, std::span<uint64_t> words);

}  // namespace dws::gpu::detail
