// device_tensors.cc — model tensors on the device (dws/gpu.h): DeviceChangeTracker, the trainer's side, and
// apply_patch_to_device_tensors, the receiver's. Both keep tensor digests in O(changes) through the changed
// words (changed_words.h), read from the device by one gather.
#include <algorithm>
#include <numeric>
#include <set>
#include <string>
#include <utility>

#include "apply/in_memory.h"
#include "codec/codecs.h"
#include "dws/gpu.h"
#include "gpu/changed_words.h"
#include "gpu/gpu_internal.h"
#include "gpu/kernels.h"
#include "patch/patch_internal.h"

namespace dws::gpu {

namespace {

using detail::no_cuda;

Status check_aligned(const NamedDeviceTensor& t, std::string_view what) {
  if (t.data == nullptr && t.numel() > 0) return make_error(ErrorCode::kInvalidArgument, std::string(what) + "tensor '" + t.name + "' has no data");
  return detail::check_alignment(t.data, dtype_size_bytes(t.dtype), std::string(what) + "tensor '" + t.name + "'");
}

// The changed words of one tensor, to be read from `tensor` (device memory) by gather_all.
struct WordRequest {
  const void* tensor = nullptr;
  uint64_t tensor_bytes = 0;
  detail::ChangedWords* words = nullptr;
};

// Reads every request's words from the device: the indices go up, one gather, the words come back. Synchronizes.
Status gather_all(std::span<const WordRequest> requests, DeviceBuffer& scratch, Stream stream) {
  uint64_t total = 0;
  for (const WordRequest& r : requests) total += r.words->indices().size();
  if (total == 0) return Status::Ok();
  DWS_RETURN_IF_ERROR(detail::reserve_device(scratch, 2 * total * sizeof(uint64_t)));
  std::vector<uint64_t> host(total);
  uint64_t at = 0;
  for (const WordRequest& r : requests) {
    std::copy(r.words->indices().begin(), r.words->indices().end(), host.begin() + static_cast<ptrdiff_t>(at));
    at += r.words->indices().size();
  }
  auto* d_indices = static_cast<uint64_t*>(scratch.data());
  uint64_t* d_words = d_indices + total;
  DWS_RETURN_IF_ERROR(detail::copy_async(d_indices, host.data(), total * sizeof(uint64_t), stream));
  std::vector<detail::WordGatherChunk> chunks;
  at = 0;
  for (const WordRequest& r : requests) {
    const uint64_t n = r.words->indices().size();
    for (uint64_t first = 0; first < n; first += detail::kScatterChunk) {
      detail::WordGatherChunk c;
      c.tensor = r.tensor;
      c.tensor_bytes = r.tensor_bytes;
      c.indices = d_indices + at + first;
      c.words = d_words + at + first;
      c.count = static_cast<uint32_t>(std::min<uint64_t>(n - first, detail::kScatterChunk));
      chunks.push_back(c);
    }
    at += n;
  }
  DWS_RETURN_IF_ERROR(detail::gather_words(chunks.data(), chunks.size(), stream));
  DWS_RETURN_IF_ERROR(detail::copy_async(host.data(), d_words, total * sizeof(uint64_t), stream));
  DWS_RETURN_IF_ERROR(detail::sync(stream));
  at = 0;
  for (const WordRequest& r : requests) {
    std::span<uint64_t> words = r.words->words();
    std::copy(host.begin() + static_cast<ptrdiff_t>(at), host.begin() + static_cast<ptrdiff_t>(at + words.size()), words.begin());
    at += words.size();
  }
  return Status::Ok();
}

std::string describe(const NamedDeviceTensor& t) { return std::string(dtype_name(t.dtype)) + " " + shape_string(t.shape); }

}  // namespace

uint64_t NamedDeviceTensor::numel() const {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;
  return n;
}

struct DeviceChangeTracker::State {
  Memory memory = Memory::kDevice;
  bool valid = false;
  std::vector<NamedDeviceTensor> snapshot;  // the layout, `data` pointing into the buffer below
  DeviceBuffer device_buffer;
  PinnedBuffer host_buffer;
  uint64_t snapshot_bytes = 0;
  TensorDigests digests;
  Differ differ;
  DeviceChangeSet changes;
  HostChangeSet host;
  DeviceBuffer word_scratch;
  PinnedBuffer staging;  // reset's copy of one tensor, for its digest
};

DeviceChangeTracker::DeviceChangeTracker(Memory snapshot_memory) : state_(std::make_unique<State>()) {
  state_->memory = snapshot_memory;
}
DeviceChangeTracker::~DeviceChangeTracker() = default;
DeviceChangeTracker::DeviceChangeTracker(DeviceChangeTracker&&) noexcept = default;
DeviceChangeTracker& DeviceChangeTracker::operator=(DeviceChangeTracker&&) noexcept = default;

bool DeviceChangeTracker::has_snapshot() const { return state_->valid; }
const TensorDigests& DeviceChangeTracker::digests() const { return state_->digests; }
uint64_t DeviceChangeTracker::snapshot_bytes() const { return state_->valid ? state_->snapshot_bytes : 0; }

Result<TensorDigests> DeviceChangeTracker::reset(std::span<const NamedDeviceTensor> tensors, Stream stream) {
  State& s = *state_;
  s.valid = false;
  s.digests.clear();
  if (!detail::available()) return no_cuda();
  const std::string what = "device tracker reset: ";
  std::set<std::string_view> names;
  uint64_t bytes = 0, largest = 0;
  for (const NamedDeviceTensor& t : tensors) {
    if (!names.insert(t.name).second) return make_error(ErrorCode::kDuplicate, what + "tensor '" + t.name + "' given twice");
    DWS_RETURN_IF_ERROR(check_aligned(t, what));
    const uint64_t b = t.numel() * dtype_size_bytes(t.dtype);
    bytes += (b + 255) / 256 * 256;  // every snapshot tensor 256-aligned: the diff's vector path
    largest = std::max(largest, b);
  }
  void* base = nullptr;
  if (s.memory == Memory::kDevice) {
    DWS_RETURN_IF_ERROR(detail::reserve_device(s.device_buffer, std::max<uint64_t>(bytes, 8)));
    base = s.device_buffer.data();
  } else {
    DWS_RETURN_IF_ERROR(s.host_buffer.reserve(std::max<uint64_t>(bytes, 8)));
    base = s.host_buffer.data();
  }
  DWS_RETURN_IF_ERROR(s.staging.reserve(std::max<uint64_t>(largest, 8)));
  s.snapshot.assign(tensors.begin(), tensors.end());
  uint64_t at = 0;
  for (NamedDeviceTensor& t : s.snapshot) {
    const uint64_t b = t.numel() * dtype_size_bytes(t.dtype);
    const void* src = t.data;
    t.data = static_cast<std::byte*>(base) + at;
    at += (b + 255) / 256 * 256;
    if (b == 0) {
      s.digests.emplace(t.name, tensor_digest(t.name, t.dtype, t.shape, {}));
      continue;
    }
    DWS_RETURN_IF_ERROR(detail::copy_async(t.data, src, b, stream).with_context(what + "tensor '" + t.name + "'"));
    DWS_RETURN_IF_ERROR(detail::copy_async(s.staging.data(), src, b, stream).with_context(what + "tensor '" + t.name + "'"));
    DWS_RETURN_IF_ERROR(detail::sync(stream).with_context(what + "tensor '" + t.name + "'"));
    s.digests.emplace(t.name, tensor_digest(t.name, t.dtype, t.shape, std::span(static_cast<const std::byte*>(s.staging.data()), b)));
  }
  s.snapshot_bytes = bytes;
  s.valid = true;
  return s.digests;
}

Result<std::vector<TrackedTensorChanges>> DeviceChangeTracker::take(std::span<const NamedDeviceTensor> tensors, Stream stream) {
  State& s = *state_;
  if (!detail::available()) return no_cuda();
  const std::string what = "device tracker take: ";
  if (!s.valid) return make_error(ErrorCode::kInvalidArgument, what + "no snapshot (call reset first, or again after an error)");
  if (tensors.size() != s.snapshot.size()) {
    return make_error(ErrorCode::kInvalidArgument, what + std::to_string(tensors.size()) + " tensors given, the snapshot holds " +
                                                       std::to_string(s.snapshot.size()));
  }
  std::vector<DiffInput> inputs;
  inputs.reserve(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const NamedDeviceTensor& t = tensors[i];
    const NamedDeviceTensor& k = s.snapshot[i];
    if (t.name != k.name || t.dtype != k.dtype || t.shape != k.shape) {
      return make_error(ErrorCode::kInvalidArgument, what + "tensor " + std::to_string(i) + " is '" + t.name + "' " + describe(t) +
                                                         "; the snapshot holds '" + k.name + "' " + describe(k));
    }
    DWS_RETURN_IF_ERROR(check_aligned(t, what));
    inputs.push_back(DiffInput{k.data, t.data, t.dtype, t.numel()});
  }
  auto fail = [&](Status st) {
    s.valid = false;
    s.digests.clear();
    return st.with_context(what.substr(0, what.size() - 2));
  };
  if (Status st = s.differ.diff(inputs, stream, s.changes); !st.ok()) return fail(st);
  if (Status st = Differ::to_host(s.changes, s.host, stream); !st.ok()) return fail(st);
  // The changed words of every changed tensor, read from the snapshot (the base) before it is written.
  std::vector<detail::ChangedWords> words;
  std::vector<size_t> changed;
  words.reserve(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (s.host.positions(i).empty()) continue;
    words.emplace_back(s.host.positions(i), dtype_size_bytes(tensors[i].dtype));
    changed.push_back(i);
  }
  std::vector<WordRequest> requests;
  for (size_t j = 0; j < changed.size(); ++j) {
    const NamedDeviceTensor& k = s.snapshot[changed[j]];
    requests.push_back({k.data, k.numel() * dtype_size_bytes(k.dtype), &words[j]});
  }
  if (Status st = gather_all(requests, s.word_scratch, stream); !st.ok()) return fail(st);
  std::vector<TrackedTensorChanges> out;
  out.reserve(changed.size());
  for (size_t j = 0; j < changed.size(); ++j) {
    const NamedDeviceTensor& t = tensors[changed[j]];
    TrackedTensorChanges c;
    c.name = t.name;
    c.dtype = t.dtype;
    c.shape = t.shape;
    const auto positions = s.host.positions(changed[j]);
    const auto base_values = s.host.base_values(changed[j]);
    const auto target_values = s.host.target_values(changed[j]);
    c.positions.assign(positions.begin(), positions.end());
    c.base_values.assign(base_values.begin(), base_values.end());
    c.target_values.assign(target_values.begin(), target_values.end());
    c.base_digest = s.digests.at(t.name);
    c.target_digest = digest_add(c.base_digest, words[j].delta(tensor_seed(t.name, t.dtype, t.shape), target_values));
    out.push_back(std::move(c));
  }
  // Bring the snapshot to the tensors' state.
  std::vector<DeviceTensor> snapshot;
  snapshot.reserve(s.snapshot.size());
  for (const NamedDeviceTensor& k : s.snapshot) snapshot.push_back(DeviceTensor{k.data, k.dtype, k.numel()});
  if (Status st = apply_changes(snapshot, s.changes, stream); !st.ok()) return fail(st);
  if (Status st = detail::sync(stream); !st.ok()) return fail(st);
  for (const TrackedTensorChanges& c : out) s.digests[c.name] = c.target_digest;
  return out;
}

Result<uint64_t> apply_patch_to_device_tensors(const Patch& patch, std::span<const NamedDeviceTensor> tensors,
                                               TensorDigests& digests, Stream stream) {
  if (!detail::available()) return no_cuda();
  const PatchHeader& h = patch.header();
  const std::string what = "apply to device tensors: ";
  DWS_RETURN_IF_ERROR(in_memory::check_no_removals(h, what));
  std::map<std::string_view, const NamedDeviceTensor*> by_name;
  for (const NamedDeviceTensor& t : tensors) by_name.emplace(t.name, &t);
  struct Pending {
    const NamedDeviceTensor* tensor = nullptr;
    const PatchTensor* patch_tensor = nullptr;
    std::vector<uint64_t> positions;
    std::vector<std::byte> values;  // operands until checked, then the new values
    codec::ChangeOp op = codec::ChangeOp::kSet;
    Digest128 base_digest;  // as the caller vouched for it
  };
  std::vector<Pending> pending;
  pending.reserve(h.tensors.size());
  for (const PatchTensor& pt : h.tensors) {
    DWS_RETURN_IF_ERROR(in_memory::check_modified(pt, what));
    auto it = by_name.find(pt.name);
    if (it == by_name.end()) return make_error(ErrorCode::kInvalidArgument, what + "no tensor '" + pt.name + "' was given");
    const NamedDeviceTensor& t = *it->second;
    if (t.dtype != pt.dtype || t.shape != pt.shape) {
      return make_error(ErrorCode::kInvalidArgument, what + "tensor '" + pt.name + "' is " + describe(t) + "; the patch expects " +
                                                         std::string(dtype_name(pt.dtype)) + " " + shape_string(pt.shape));
    }
    DWS_RETURN_IF_ERROR(check_aligned(t, what));
    DWS_ASSIGN_OR_RETURN(const Digest128 base_digest, in_memory::check_base_digest(pt, digests, what));
    Pending p;
    p.tensor = &t;
    p.patch_tensor = &pt;
    p.base_digest = base_digest;
    if (pt.encoding == Encoding::kFull) {
      const Digest128 got = tensor_digest(pt.name, pt.dtype, pt.shape, patch.payload(pt, 0));
      if (got != pt.target_digest) return in_memory::target_mismatch(what, pt, got);
    } else {
      p.op = codec::change_op(pt.encoding);
      const codec::DecodeParams params{pt.encoding, pt.dtype, pt.numel(), pt.changes, pt.index_dtype};
      DWS_RETURN_IF_ERROR(codec::decode_operands(params, payload_views(patch, pt),
                                                 [&](std::span<const uint64_t> pos, std::span<const std::byte> ops) {
                                                   p.positions.insert(p.positions.end(), pos.begin(), pos.end());
                                                   p.values.insert(p.values.end(), ops.begin(), ops.end());
                                                   return Status::Ok();
                                                 })
                              .with_context(what + "tensor '" + pt.name + "'"));
      if (p.positions.size() != pt.changes) {
        return make_error(ErrorCode::kPatchMetadata, what + "tensor '" + pt.name + "': decoded " + std::to_string(p.positions.size()) +
                                                         " changes, the patch declares " + std::to_string(pt.changes));
      }
    }
    pending.push_back(std::move(p));
  }
  // The current words around every change, from the device in one gather.
  std::vector<detail::ChangedWords> words;
  std::vector<WordRequest> requests;
  words.reserve(pending.size());
  for (const Pending& p : pending) {
    if (p.patch_tensor->encoding == Encoding::kFull) continue;
    words.emplace_back(p.positions, dtype_size_bytes(p.tensor->dtype));
    requests.push_back({p.tensor->data, p.tensor->numel() * dtype_size_bytes(p.tensor->dtype), &words.back()});
  }
  DeviceBuffer scratch;
  DWS_RETURN_IF_ERROR(gather_all(requests, scratch, stream).with_context(what.substr(0, what.size() - 2)));
  // New values on the host (codec::apply_operands over the gathered current values), and the digest check.
  size_t j = 0;
  uint64_t total = 0, value_bytes = 0;
  for (Pending& p : pending) {
    if (p.patch_tensor->encoding == Encoding::kFull) continue;
    const DType dtype = p.tensor->dtype;
    const size_t w = dtype_size_bytes(dtype);
    detail::ChangedWords& cw = words[j++];
    std::vector<std::byte> values(p.positions.size() * w);
    if (p.op == codec::ChangeOp::kSet) {
      values = std::move(p.values);
    } else {
      cw.read_values(values);
      std::vector<uint64_t> local(p.positions.size());
      std::iota(local.begin(), local.end(), uint64_t{0});
      codec::apply_operands(dtype, p.op, values, local, p.values);
    }
    const PatchTensor& pt = *p.patch_tensor;
    const Digest128 got = digest_add(p.base_digest, cw.delta(tensor_seed(pt.name, pt.dtype, pt.shape), values));
    if (got != pt.target_digest) return in_memory::target_mismatch(what, pt, got);
    p.values = std::move(values);
    total += p.positions.size();
    value_bytes += (p.values.size() + 7) / 8 * 8;
  }
  // Everything checked: upload the changes and write them with one scatter; whole tensors are copied.
  DeviceBuffer d_positions, d_values;
  std::vector<detail::ScatterChunk> chunks;
  if (total > 0) {
    DWS_ASSIGN_OR_RETURN(d_positions, DeviceBuffer::allocate(total * sizeof(uint64_t)));
    DWS_ASSIGN_OR_RETURN(d_values, DeviceBuffer::allocate(value_bytes));
  }
  uint64_t pos_at = 0, val_at = 0, written = 0;
  for (const Pending& p : pending) {
    const PatchTensor& pt = *p.patch_tensor;
    if (pt.encoding == Encoding::kFull) {
      const auto payload = patch.payload(pt, 0);
      DWS_RETURN_IF_ERROR(detail::copy_async(p.tensor->data, payload.data(), payload.size(), stream).with_context(what + "tensor '" + pt.name + "'"));
      written += pt.numel();
      continue;
    }
    if (p.positions.empty()) continue;
    auto* dp = static_cast<uint64_t*>(d_positions.data()) + pos_at;
    std::byte* dv = static_cast<std::byte*>(d_values.data()) + val_at;
    DWS_RETURN_IF_ERROR(detail::copy_async(dp, p.positions.data(), p.positions.size() * sizeof(uint64_t), stream));
    DWS_RETURN_IF_ERROR(detail::copy_async(dv, p.values.data(), p.values.size(), stream));
    detail::add_scatter_chunks(p.tensor->data, p.tensor->dtype, codec::ChangeOp::kSet, dp, dv, p.positions.size(), chunks);
    pos_at += p.positions.size();
    val_at += (p.values.size() + 7) / 8 * 8;
    written += p.positions.size();
  }
  DWS_RETURN_IF_ERROR(detail::scatter_chunks(chunks.data(), chunks.size(), stream).with_context(what.substr(0, what.size() - 2)));
  DWS_RETURN_IF_ERROR(detail::sync(stream).with_context(what.substr(0, what.size() - 2)));
  for (const Pending& p : pending) digests[p.patch_tensor->name] = p.patch_tensor->target_digest;
  return written;
}

}  // namespace dws::gpu
