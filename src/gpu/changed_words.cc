// changed_words.cc — see changed_words.h.
#include "gpu/changed_words.h"

#include <algorithm>
#include <cstring>

namespace dws::gpu::detail {

ChangedWords::ChangedWords(std::span<const uint64_t> positions, size_t elem_size)
    : positions_(positions), elem_size_(elem_size) {
  slot_.reserve(positions.size());
  for (const uint64_t p : positions) {
    const uint64_t word = p * elem_size / 8;
    if (indices_.empty() || indices_.back() != word) indices_.push_back(word);
    slot_.push_back(indices_.size() - 1);
  }
  words_.assign(indices_.size(), 0);
}

void ChangedWords::read_values(std::span<std::byte> values) const {
  for (size_t i = 0; i < positions_.size(); ++i) {
    const uint64_t word = words_[slot_[i]];
    const size_t shift_bits = (positions_[i] * elem_size_ % 8) * 8;
    for (size_t b = 0; b < elem_size_; ++b) {
      values[i * elem_size_ + b] = static_cast<std::byte>((word >> (shift_bits + 8 * b)) & 0xFF);
    }
  }
}

Digest128 ChangedWords::delta(const TensorSeed& seed, std::span<const std::byte> new_values) const {
  Digest128 sum;
  size_t i = 0;
  for (size_t s = 0; s < indices_.size(); ++s) {
    const uint64_t old_word = words_[s];
    uint64_t new_word = old_word;
    for (; i < positions_.size() && slot_[i] == s; ++i) {
      const size_t shift_bits = (positions_[i] * elem_size_ % 8) * 8;
      const uint64_t mask = elem_size_ == 8 ? ~uint64_t{0} : ((uint64_t{1} << (8 * elem_size_)) - 1) << shift_bits;
      uint64_t value = 0;
      for (size_t b = 0; b < elem_size_; ++b) value |= static_cast<uint64_t>(new_values[i * elem_size_ + b]) << (8 * b);
      new_word = (new_word & ~mask) | (value << shift_bits);
    }
    if (new_word == old_word) continue;
    sum = digest_add(sum, digest_sub(word_digest(seed, indices_[s], new_word), word_digest(seed, indices_[s], old_word)));
  }
  return sum;
}

void read_words(std::span<const std::byte> tensor, std::span<const uint64_t> indices, std::span<uint64_t> words) {
  for (size_t i = 0; i < indices.size(); ++i) {
    const uint64_t first = indices[i] * 8;
    uint64_t word = 0;
    const uint64_t n = first < tensor.size() ? std::min<uint64_t>(8, tensor.size() - first) : 0;
    for (uint64_t b = 0; b < n; ++b) word |= static_cast<uint64_t>(tensor[first + b]) << (8 * b);
    words[i] = word;
  }
}

}  // namespace dws::gpu::detail
