// gpu.cc — dws/gpu.h on top of the CUDA-free kernel interface (kernels.h).
#include "dws/gpu.h"

#include <algorithm>
#include <string>
#include <utility>

#include "codec/codecs.h"
#include "gpu/gpu_internal.h"
#include "gpu/kernels.h"
#include "patch/patch_internal.h"

namespace dws::gpu {

using detail::check_alignment;
using detail::no_cuda;
using detail::reserve_device;

namespace detail {

Status check_alignment(const void* p, size_t w, std::string_view what) {
  if (reinterpret_cast<uintptr_t>(p) % w != 0) {
    return make_error(ErrorCode::kInvalidArgument, std::string(what) + " is not aligned to its " + std::to_string(w) + "-byte elements");
  }
  return Status::Ok();
}

}  // namespace detail

bool built_with_cuda() { return detail::available(); }

Result<int> device_count() {
  int n = 0;
  DWS_RETURN_IF_ERROR(detail::device_count(&n));
  return n;
}

Result<DeviceInfo> device_info(int ordinal) {
  DeviceInfo info;
  DWS_RETURN_IF_ERROR(detail::device_info(ordinal, &info));
  return info;
}

Status set_device(int ordinal) { return detail::set_device(ordinal); }

Result<DeviceBuffer> DeviceBuffer::allocate(uint64_t bytes) {
  DeviceBuffer b;
  DWS_RETURN_IF_ERROR(detail::malloc_device(&b.data_, bytes).with_context("allocating " + std::to_string(bytes) + " device bytes"));
  b.bytes_ = bytes;
  return b;
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) detail::free_device(data_);
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

DeviceBuffer::~DeviceBuffer() {
  if (data_ != nullptr) detail::free_device(data_);
}

Result<PinnedBuffer> PinnedBuffer::allocate(uint64_t bytes) {
  PinnedBuffer b;
  DWS_RETURN_IF_ERROR(b.reserve(bytes));
  return b;
}

PinnedBuffer::PinnedBuffer(PinnedBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

PinnedBuffer& PinnedBuffer::operator=(PinnedBuffer&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) detail::free_pinned(data_);
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

PinnedBuffer::~PinnedBuffer() {
  if (data_ != nullptr) detail::free_pinned(data_);
}

Status PinnedBuffer::reserve(uint64_t bytes) {
  if (bytes <= bytes_ && data_ != nullptr) return Status::Ok();
  if (data_ != nullptr) detail::free_pinned(std::exchange(data_, nullptr));
  bytes_ = 0;
  DWS_RETURN_IF_ERROR(detail::malloc_pinned(&data_, bytes).with_context("allocating " + std::to_string(bytes) + " pinned host bytes"));
  bytes_ = bytes;
  return Status::Ok();
}

Status detail::reserve_device(DeviceBuffer& b, uint64_t bytes) {
  if (b.data() != nullptr && b.size_bytes() >= bytes) return Status::Ok();
  b = DeviceBuffer();
  DWS_ASSIGN_OR_RETURN(b, DeviceBuffer::allocate(bytes));
  return Status::Ok();
}

std::span<const uint64_t> HostChangeSet::positions(size_t tensor) const {
  const DeviceChangeSet::Entry& e = entries_.at(tensor);
  return {static_cast<const uint64_t*>(positions_.data()) + e.first_change, e.count};
}

std::span<const std::byte> HostChangeSet::base_values(size_t tensor) const {
  const DeviceChangeSet::Entry& e = entries_.at(tensor);
  return {static_cast<const std::byte*>(base_values_.data()) + e.value_byte, e.count * dtype_size_bytes(e.dtype)};
}

std::span<const std::byte> HostChangeSet::target_values(size_t tensor) const {
  const DeviceChangeSet::Entry& e = entries_.at(tensor);
  return {static_cast<const std::byte*>(target_values_.data()) + e.value_byte, e.count * dtype_size_bytes(e.dtype)};
}

Status copy(void* dst, const void* src, uint64_t bytes, Stream stream) {
  DWS_RETURN_IF_ERROR(detail::copy_async(dst, src, bytes, stream));
  return detail::sync(stream);
}

Status synchronize(Stream stream) { return detail::sync(stream); }

struct Differ::Scratch {
  DeviceBuffer buffer;
  std::vector<detail::DiffTensor> table;
  PinnedBuffer starts;  // written by the device: pinned, so the copy is a real async DMA
};

Differ::Differ() : scratch_(std::make_unique<Scratch>()) {}
Differ::~Differ() = default;
Differ::Differ(Differ&&) noexcept = default;
Differ& Differ::operator=(Differ&&) noexcept = default;

Result<DeviceChangeSet> Differ::diff(std::span<const DiffInput> tensors, Stream stream) {
  DeviceChangeSet out;
  DWS_RETURN_IF_ERROR(diff(tensors, stream, out));
  return out;
}

Status Differ::diff(std::span<const DiffInput> tensors, Stream stream, DeviceChangeSet& out) {
  out.tensors.clear();
  out.total = 0;
  if (!detail::available()) return no_cuda();
  std::vector<detail::DiffTensor>& table = scratch_->table;
  table.clear();
  uint64_t tiles = 0, words = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const DiffInput& in = tensors[i];
    const size_t w = dtype_size_bytes(in.dtype);
    const std::string what = "diff: tensor " + std::to_string(i);
    DWS_RETURN_IF_ERROR(check_alignment(in.base, w, what + " base"));
    DWS_RETURN_IF_ERROR(check_alignment(in.target, w, what + " target"));
    out.tensors.push_back({in.dtype, in.numel, 0, 0, 0});
    if (in.numel == 0) continue;  // no tiles: the kernels never see it
    detail::DiffTensor t;
    t.base = in.base;
    t.target = in.target;
    t.numel = in.numel;
    t.first_tile = tiles;
    t.first_word = words;
    t.elem_size = static_cast<uint32_t>(w);
    t.vectorized = (reinterpret_cast<uintptr_t>(in.base) | reinterpret_cast<uintptr_t>(in.target)) % 16 == 0;
    const uint64_t tile_elems = detail::diff_tile_elems(w);
    const uint64_t n_tiles = (in.numel + tile_elems - 1) / tile_elems;
    tiles += n_tiles;
    words += n_tiles * (tile_elems / 32);
    table.push_back(t);
  }
  auto fail = [&](Status st) {
    out.tensors.clear();
    out.total = 0;
    return st;
  };
  const detail::DiffPlan plan = detail::diff_plan(table.size(), tiles, words);
  if (Status st = reserve_device(scratch_->buffer, plan.total_bytes()); !st.ok()) return fail(st);
  if (Status st = scratch_->starts.reserve((table.size() + 1) * sizeof(uint64_t)); !st.ok()) return fail(st);
  auto* starts = static_cast<uint64_t*>(scratch_->starts.data());
  if (Status st = detail::diff_count(table.data(), plan, scratch_->buffer.data(), starts, stream); !st.ok()) return fail(st);
  // Place each tensor's values, in input order.
  uint64_t value_bytes = 0;
  for (size_t i = 0, k = 0; i < out.tensors.size(); ++i) {
    DeviceChangeSet::Entry& e = out.tensors[i];
    value_bytes = (value_bytes + 7) / 8 * 8;  // every tensor's values start aligned for the widest element
    e.value_byte = value_bytes;
    if (e.numel == 0) {
      e.first_change = starts[k];  // k <= table.size(): starts has table.size() + 1 entries
      continue;
    }
    e.first_change = starts[k];
    e.count = starts[k + 1] - starts[k];
    table[k].value_byte = value_bytes;
    value_bytes += e.count * dtype_size_bytes(e.dtype);
    ++k;
  }
  out.total = starts[table.size()];
  if (Status st = reserve_device(out.positions, out.total * sizeof(uint64_t)); !st.ok()) return fail(st);
  if (Status st = reserve_device(out.base_values, value_bytes); !st.ok()) return fail(st);
  if (Status st = reserve_device(out.target_values, value_bytes); !st.ok()) return fail(st);
  if (out.total > 0) {
    Status st = detail::diff_compact(table.data(), plan, scratch_->buffer.data(), starts, static_cast<uint64_t*>(out.positions.data()),
                                     out.base_values.data(), out.target_values.data(), stream);
    if (!st.ok()) return fail(st);
  }
  return Status::Ok();
}

Status Differ::to_host(const DeviceChangeSet& changes, HostChangeSet& out, Stream stream) {
  out.entries_.clear();
  out.total_ = 0;
  if (!detail::available()) return no_cuda();
  uint64_t value_bytes = 0;
  for (const DeviceChangeSet::Entry& e : changes.tensors) {
    value_bytes = std::max(value_bytes, e.value_byte + e.count * dtype_size_bytes(e.dtype));
  }
  const uint64_t position_bytes = changes.total * sizeof(uint64_t);
  DWS_RETURN_IF_ERROR(out.positions_.reserve(position_bytes));
  DWS_RETURN_IF_ERROR(out.base_values_.reserve(value_bytes));
  DWS_RETURN_IF_ERROR(out.target_values_.reserve(value_bytes));
  // The arrays are contiguous over all tensors: three transfers, whatever the number of tensors.
  DWS_RETURN_IF_ERROR(detail::copy_async(out.positions_.data(), changes.positions.data(), position_bytes, stream));
  DWS_RETURN_IF_ERROR(detail::copy_async(out.base_values_.data(), changes.base_values.data(), value_bytes, stream));
  DWS_RETURN_IF_ERROR(detail::copy_async(out.target_values_.data(), changes.target_values.data(), value_bytes, stream));
  DWS_RETURN_IF_ERROR(detail::sync(stream));
  out.entries_ = changes.tensors;
  out.total_ = changes.total;
  return Status::Ok();
}

Status apply_changes(std::span<const DeviceTensor> tensors, const DeviceChangeSet& changes, Stream stream) {
  if (!detail::available()) return no_cuda();
  if (tensors.size() != changes.tensors.size()) {
    return make_error(ErrorCode::kInvalidArgument, "apply_changes: " + std::to_string(tensors.size()) + " tensors for changes of " +
                                                       std::to_string(changes.tensors.size()));
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    const DeviceTensor& t = tensors[i];
    const DeviceChangeSet::Entry& e = changes.tensors[i];
    if (t.dtype != e.dtype || t.numel != e.numel) {
      return make_error(ErrorCode::kInvalidArgument,
                        "apply_changes: tensor " + std::to_string(i) + " is " + std::string(dtype_name(t.dtype)) + "[" +
                            std::to_string(t.numel) + "], its changes are for " + std::string(dtype_name(e.dtype)) + "[" +
                            std::to_string(e.numel) + "]");
    }
    DWS_RETURN_IF_ERROR(check_alignment(t.data, dtype_size_bytes(t.dtype), "apply_changes: tensor " + std::to_string(i)));
  }
  std::vector<detail::ScatterChunk> chunks;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const DeviceChangeSet::Entry& e = changes.tensors[i];
    detail::add_scatter_chunks(tensors[i].data, e.dtype, codec::ChangeOp::kSet,
                               static_cast<const uint64_t*>(changes.positions.data()) + e.first_change,
                               static_cast<const std::byte*>(changes.target_values.data()) + e.value_byte, e.count, chunks);
  }
  return detail::scatter_chunks(chunks.data(), chunks.size(), stream);
}

Result<ApplyTensorStats> apply_tensor(const Patch& patch, const PatchTensor& tensor, const DeviceTensor& dst,
                                      Stream stream) {
  if (!detail::available()) return no_cuda();
  const std::string where = "gpu apply of tensor '" + tensor.name + "'";
  if (dst.dtype != tensor.dtype || dst.numel != tensor.numel()) {
    return make_error(ErrorCode::kInvalidArgument, where + ": the device tensor is " + std::string(dtype_name(dst.dtype)) +
                                                        "[" + std::to_string(dst.numel) + "], the patch's target " +
                                                        std::string(dtype_name(tensor.dtype)) + "[" +
                                                        std::to_string(tensor.numel()) + "]");
  }
  const size_t w = dtype_size_bytes(tensor.dtype);
  DWS_RETURN_IF_ERROR(check_alignment(dst.data, w, where + ": device tensor"));
  ApplyTensorStats stats;
  const std::vector<codec::PayloadView> payloads = payload_views(patch, tensor);
  if (tensor.encoding == Encoding::kFull) {
    if (payloads.size() != 1 || payloads[0].bytes.size() != dst.numel * w) {
      return make_error(ErrorCode::kPatchMetadata, where + ": a full tensor needs one payload of " + std::to_string(dst.numel * w) + " bytes");
    }
    DWS_RETURN_IF_ERROR(copy(dst.data, payloads[0].bytes.data(), payloads[0].bytes.size(), stream).with_context(where));
    stats.changes = dst.numel;
    stats.uploaded_bytes = payloads[0].bytes.size();
    return stats;
  }
  // Decode everything on the host first: nothing reaches the device unless the whole payload is valid.
  const codec::ChangeOp op = codec::change_op(tensor.encoding);
  const size_t ow = codec::operand_size_bytes(op, tensor.dtype);
  std::vector<uint64_t> positions;
  std::vector<std::byte> operands;
  positions.reserve(tensor.changes);
  operands.reserve(tensor.changes * ow);
  const codec::DecodeParams params{tensor.encoding, tensor.dtype, tensor.numel(), tensor.changes, tensor.index_dtype};
  DWS_RETURN_IF_ERROR(codec::decode_operands(params, payloads,
                                             [&](std::span<const uint64_t> pos, std::span<const std::byte> ops) {
                                               positions.insert(positions.end(), pos.begin(), pos.end());
                                               operands.insert(operands.end(), ops.begin(), ops.end());
                                               return Status::Ok();
                                             })
                          .with_context(where));
  if (positions.size() != tensor.changes) {
    return make_error(ErrorCode::kPatchMetadata, where + ": decoded " + std::to_string(positions.size()) +
                                                     " changes, the patch declares " + std::to_string(tensor.changes));
  }
  DWS_ASSIGN_OR_RETURN(DeviceBuffer d_positions, DeviceBuffer::allocate(positions.size() * sizeof(uint64_t)));
  DWS_ASSIGN_OR_RETURN(DeviceBuffer d_operands, DeviceBuffer::allocate(operands.size()));
  DWS_RETURN_IF_ERROR(detail::copy_async(d_positions.data(), positions.data(), positions.size() * sizeof(uint64_t), stream));
  DWS_RETURN_IF_ERROR(detail::copy_async(d_operands.data(), operands.data(), operands.size(), stream));
  DWS_RETURN_IF_ERROR(detail::scatter(dst.data, tensor.dtype, op, static_cast<const uint64_t*>(d_positions.data()),
                                      d_operands.data(), positions.size(), stream)
                          .with_context(where));
  DWS_RETURN_IF_ERROR(detail::sync(stream).with_context(where));
  stats.changes = positions.size();
  stats.uploaded_bytes = positions.size() * sizeof(uint64_t) + operands.size();
  return stats;
}

namespace detail {

void add_scatter_chunks(void* tensor, DType dtype, codec::ChangeOp op, const uint64_t* positions, const void* operands,
                        uint64_t n, std::vector<ScatterChunk>& out) {
  const size_t ow = codec::operand_size_bytes(op, dtype);
  for (uint64_t first = 0; first < n; first += kScatterChunk) {
    ScatterChunk c;
    c.tensor = tensor;
    c.positions = positions + first;
    c.operands = static_cast<const std::byte*>(operands) + first * ow;
    c.count = static_cast<uint32_t>(std::min<uint64_t>(n - first, kScatterChunk));
    c.elem_size = static_cast<uint8_t>(dtype_size_bytes(dtype));
    c.op = static_cast<uint8_t>(op);
    c.is_float = dtype_is_float(dtype) ? 1 : 0;
    out.push_back(c);
  }
}

}  // namespace detail

}  // namespace dws::gpu
