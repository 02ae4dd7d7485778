// ChangeTracker: records changed elements as a trainer writes its published tensors (dws/track.h).
#include "dws/track.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "dws/digest.h"

namespace dws {

Status ChangeTracker::write(const TensorView& tensor, uint64_t offset_elements, std::span<const std::byte> values) {
  const size_t w = dtype_size_bytes(tensor.dtype);
  const std::optional<uint64_t> size = checked_size_bytes(tensor.dtype, tensor.shape);
  if (!size || tensor.data.size() != *size) {
    return make_error(ErrorCode::kInvalidArgument, "track: tensor '" + tensor.name + "' holds " + std::to_string(tensor.data.size()) +
                                                       " bytes, which is not what its dtype and shape " + shape_string(tensor.shape) + " need");
  }
  const uint64_t numel = *size / w;
  if (values.size() % w != 0 || offset_elements > numel || values.size() / w > numel - offset_elements) {
    return make_error(ErrorCode::kInvalidArgument, "track: writing " + std::to_string(values.size()) + " bytes at element " +
                                                       std::to_string(offset_elements) + " of tensor '" + tensor.name + "' (" +
                                                       std::to_string(numel) + " elements of " + std::to_string(w) + " bytes)");
  }
  auto it = records_.find(tensor.name);
  if (it == records_.end()) {
    it = records_.emplace(tensor.name, Record{}).first;
    it->second.dtype = tensor.dtype;
    it->second.shape = tensor.shape;
  } else if (it->second.dtype != tensor.dtype || it->second.shape != tensor.shape) {
    return make_error(ErrorCode::kInvalidArgument, "track: tensor '" + tensor.name + "' changed dtype or shape since it was first written (" +
                                                       std::string(dtype_name(it->second.dtype)) + " " + shape_string(it->second.shape) +
                                                       " -> " + std::string(dtype_name(tensor.dtype)) + " " + shape_string(tensor.shape) + ")");
  }
  Record& r = it->second;
  std::byte* dst = tensor.data.data() + offset_elements * w;
  const std::byte* src = values.data();
  const size_t n = values.size() / w;
  // Skip equal runs eight bytes at a time; most elements do not change.
  size_t i = 0;
  while (i < n) {
    if ((i * w) % 8 == 0 && (n - i) * w >= 8 && std::memcmp(dst + i * w, src + i * w, 8) == 0) {
      i += 8 / w;
      continue;
    }
    if (std::memcmp(dst + i * w, src + i * w, w) != 0) {
      const uint64_t p = offset_elements + i;
      if (!r.positions.empty() && p <= r.positions.back()) r.sorted = false;
      r.positions.push_back(p);
      r.base_values.insert(r.base_values.end(), dst + i * w, dst + (i + 1) * w);
      std::memcpy(dst + i * w, src + i * w, w);
    }
    ++i;
  }
  // Unsorted records (several steps between takes) grow by duplicates: fold them once they doubled.
  if (!r.sorted && r.positions.size() > 2 * r.compacted + (1u << 16)) compact(r);
  return Status::Ok();
}

void ChangeTracker::compact(Record& r) {
  const size_t w = dtype_size_bytes(r.dtype);
  if (!r.sorted) {
    std::vector<size_t> order(r.positions.size());
    std::iota(order.begin(), order.end(), size_t{0});
    // Stable: among entries of one position the first noted (the oldest value) comes first and is kept.
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return r.positions[a] < r.positions[b]; });
    std::vector<uint64_t> positions;
    std::vector<std::byte> values;
    positions.reserve(order.size());
    values.reserve(order.size() * w);
    for (size_t k : order) {
      if (!positions.empty() && positions.back() == r.positions[k]) continue;
      positions.push_back(r.positions[k]);
      values.insert(values.end(), r.base_values.begin() + static_cast<ptrdiff_t>(k * w), r.base_values.begin() + static_cast<ptrdiff_t>((k + 1) * w));
    }
    r.positions = std::move(positions);
    r.base_values = std::move(values);
    r.sorted = true;
  }
  r.compacted = r.positions.size();
}

Result<std::vector<TrackedTensorChanges>> ChangeTracker::take(std::span<const TensorView> tensors, const TensorDigests& base_digests) {
  std::map<std::string_view, const TensorView*> by_name;
  for (const TensorView& v : tensors) by_name.emplace(v.name, &v);
  std::vector<TrackedTensorChanges> out;
  for (auto& [name, r] : records_) {
    auto v = by_name.find(name);
    if (v == by_name.end()) return make_error(ErrorCode::kInvalidArgument, "track: tensor '" + name + "' was written but is not among the tensors taken");
    const TensorView& t = *v->second;
    if (t.dtype != r.dtype || t.shape != r.shape) {
      return make_error(ErrorCode::kInvalidArgument, "track: tensor '" + name + "' is not the tensor that was written (dtype or shape)");
    }
    auto d = base_digests.find(name);
    if (d == base_digests.end()) return make_error(ErrorCode::kInvalidArgument, "track: no base digest for tensor '" + name + "'");
    if (checked_size_bytes(t.dtype, t.shape) != std::optional<uint64_t>(t.data.size())) {
      return make_error(ErrorCode::kInvalidArgument, "track: tensor '" + name + "' has the wrong byte size");
    }
  }
  for (auto& [name, r] : records_) {
    if (r.positions.empty()) continue;
    compact(r);
    const TensorView& t = *by_name.at(name);
    const size_t w = dtype_size_bytes(t.dtype);
    TrackedTensorChanges c;
    c.name = name;
    c.dtype = t.dtype;
    c.shape = t.shape;
    c.base_digest = base_digests.find(name)->second;
    const TensorSeed seed = tensor_seed(name, t.dtype, t.shape);
    // digest(base) − digest(target): "write" the old values back into the target's bytes.
    TensorDigestDelta back(seed, t.data, w);
    for (size_t k = 0; k < r.positions.size(); ++k) {
      const uint64_t p = r.positions[k];
      const std::byte* now = t.data.data() + p * w;
      const std::byte* old = r.base_values.data() + k * w;
      if (std::memcmp(now, old, w) == 0) continue;  // written back to its old value
      c.positions.push_back(p);
      c.base_values.insert(c.base_values.end(), old, old + w);
      c.target_values.insert(c.target_values.end(), now, now + w);
      back.set(p, old);
    }
    c.target_digest = digest_sub(c.base_digest, back.delta());
    if (!c.positions.empty()) out.push_back(std::move(c));
  }
  records_.clear();
  return out;
}

uint64_t ChangeTracker::recorded_changes() const {
  uint64_t n = 0;
  for (const auto& [name, r] : records_) n += r.positions.size();
  return n;
}

uint64_t ChangeTracker::memory_bytes() const {
  uint64_t n = 0;
  for (const auto& [name, r] : records_) n += r.positions.capacity() * sizeof(uint64_t) + r.base_values.capacity() + name.size();
  return n;
}

}  // namespace dws
