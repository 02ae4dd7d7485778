// broadcast.cc — the NCCL transport (dws/gpu_broadcast.h) in a CUDA build: NCCL loaded with dlopen,
// a communicator with its own NCCL stream, two receive slots and the events that order them.
//
// Double buffering: bucket k is received into slot k % 2 on the NCCL stream, which first waits until the
// scatter of bucket k - 2 (the slot's previous bucket) has finished on the caller's stream; the caller's
// stream waits for the receive, then scatters. So bucket k + 1 is on the wire while bucket k is applied.
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <nccl.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "dws/digest.h"
#include "dws/gpu_broadcast.h"
#include "gpu/broadcast_internal.h"
#include "gpu/cuda_status.h"
#include "gpu/kernels.h"

namespace dws::gpu {

namespace {

// The NCCL entry points dws uses, resolved from libnccl at first use.
struct NcclApi {
  std::string error;  // why it could not be loaded; empty when it was
  ncclResult_t (*GetVersion)(int*) = nullptr;
  ncclResult_t (*GetUniqueId)(ncclUniqueId*) = nullptr;
  ncclResult_t (*CommInitRank)(ncclComm_t*, int, ncclUniqueId, int) = nullptr;
  ncclResult_t (*CommInitAll)(ncclComm_t*, int, const int*) = nullptr;
  ncclResult_t (*CommDestroy)(ncclComm_t) = nullptr;
  ncclResult_t (*Broadcast)(const void*, void*, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t) = nullptr;
  ncclResult_t (*AllReduce)(const void*, void*, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t, cudaStream_t) = nullptr;
  ncclResult_t (*GroupStart)() = nullptr;
  ncclResult_t (*GroupEnd)() = nullptr;
  const char* (*GetErrorString)(ncclResult_t) = nullptr;
};

const NcclApi& nccl() {
  static const NcclApi api = [] {
    NcclApi a;
    const char* env = std::getenv("DWS_NCCL_LIBRARY");
    const std::string name = env != nullptr && *env != '\0' ? env : "libnccl.so.2";
    void* h = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (h == nullptr) {
      const char* why = dlerror();
      a.error = "NCCL not found: dlopen(" + name + ") failed: " + (why ? why : "unknown error") +
                " (install NCCL or set DWS_NCCL_LIBRARY to libnccl.so.2's path)";
      return a;
    }
    bool ok = true;
    auto sym = [&](auto& fn, const char* symbol) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(h, symbol));
      if (fn == nullptr) {
        ok = false;
        a.error = "NCCL at " + name + " lacks " + symbol;
      }
    };
    sym(a.GetVersion, "ncclGetVersion");
    sym(a.GetUniqueId, "ncclGetUniqueId");
    sym(a.CommInitRank, "ncclCommInitRank");
    sym(a.CommInitAll, "ncclCommInitAll");
    sym(a.CommDestroy, "ncclCommDestroy");
    sym(a.Broadcast, "ncclBroadcast");
    sym(a.AllReduce, "ncclAllReduce");
    sym(a.GroupStart, "ncclGroupStart");
    sym(a.GroupEnd, "ncclGroupEnd");
    sym(a.GetErrorString, "ncclGetErrorString");
    if (!ok) dlclose(h);  // a.error says which symbol is missing
    return a;
  }();
  return api;
}

Status unsupported() { return make_error(ErrorCode::kUnsupported, nccl().error); }

Status nccl_error(const char* call, ncclResult_t r) {
  return make_error(ErrorCode::kDevice, std::string(call) + ": " + nccl().GetErrorString(r));
}

#define DWS_NCCL(call)                                                       \
  do {                                                                       \
    const ncclResult_t dws_nccl_r_ = (call);                                 \
    if (dws_nccl_r_ != ncclSuccess) return nccl_error(#call, dws_nccl_r_);   \
  } while (0)

constexpr uint64_t kMagic = 0x3162447344535744ull;  // "DWSDsDb1"

struct Header {
  uint64_t magic = 0;
  uint64_t tensors = 0;
  uint64_t fingerprint = 0;
  uint64_t total = 0;
};

// A digest of the (dtype, numel) list: ranks with different tensor lists must not exchange changes.
uint64_t fingerprint(std::span<const DType> dtypes, std::span<const uint64_t> numels) {
  std::vector<uint64_t> words;
  for (size_t i = 0; i < dtypes.size(); ++i) {
    words.push_back(static_cast<uint64_t>(dtypes[i]));
    words.push_back(numels[i]);
  }
  return digest_bytes(std::as_bytes(std::span<const uint64_t>(words))).low;
}

// Restores the calling thread's device when it goes out of scope.
struct DeviceGuard {
  int previous = -1;
  explicit DeviceGuard(int device) {
    if (cudaGetDevice(&previous) != cudaSuccess) previous = -1;
    (void)cudaSetDevice(device);
  }
  ~DeviceGuard() {
    if (previous >= 0) (void)cudaSetDevice(previous);
  }
};

}  // namespace

struct Communicator::State {
  ncclComm_t comm = nullptr;
  int rank = 0;
  int ranks = 0;
  int device = 0;
  cudaStream_t stream = nullptr;  // NCCL's
  cudaEvent_t entry = nullptr;
  cudaEvent_t received[2] = {nullptr, nullptr};
  cudaEvent_t applied[2] = {nullptr, nullptr};
  DeviceBuffer slots[2];
  DeviceBuffer small;  // header, verdict, counts
  PinnedBuffer host_small;

  Status create_streams() {
    DWS_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    DWS_CUDA(cudaEventCreateWithFlags(&entry, cudaEventDisableTiming));
    for (int i = 0; i < 2; ++i) {
      DWS_CUDA(cudaEventCreateWithFlags(&received[i], cudaEventDisableTiming));
      DWS_CUDA(cudaEventCreateWithFlags(&applied[i], cudaEventDisableTiming));
    }
    return Status::Ok();
  }

  ~State() {
    DeviceGuard guard(device);
    if (stream != nullptr) (void)cudaStreamSynchronize(stream);
    for (int i = 0; i < 2; ++i) {
      if (applied[i] != nullptr) (void)cudaEventSynchronize(applied[i]);  // scatters still reading a slot
      if (received[i] != nullptr) (void)cudaEventDestroy(received[i]);
      if (applied[i] != nullptr) (void)cudaEventDestroy(applied[i]);
    }
    if (entry != nullptr) (void)cudaEventDestroy(entry);
    if (stream != nullptr) (void)cudaStreamDestroy(stream);
    if (comm != nullptr) (void)nccl().CommDestroy(comm);
  }
};

Result<std::string> nccl_version() {
  if (!nccl().error.empty()) return unsupported();
  int v = 0;
  DWS_NCCL(nccl().GetVersion(&v));
  // Since 2.9: major * 10000 + minor * 100 + patch.
  return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
}

Result<NcclId> nccl_unique_id() {
  if (!nccl().error.empty()) return unsupported();
  ncclUniqueId id;
  DWS_NCCL(nccl().GetUniqueId(&id));
  static_assert(sizeof(ncclUniqueId) == sizeof(NcclId::bytes));
  NcclId out;
  std::memcpy(out.bytes.data(), &id, sizeof(id));
  return out;
}

Communicator::Communicator() = default;
Communicator::Communicator(Communicator&&) noexcept = default;
Communicator& Communicator::operator=(Communicator&&) noexcept = default;
Communicator::~Communicator() = default;
int Communicator::rank() const { return state_ ? state_->rank : -1; }
int Communicator::ranks() const { return state_ ? state_->ranks : 0; }
int Communicator::device() const { return state_ ? state_->device : -1; }

Result<Communicator> Communicator::init(int ranks, int rank, const NcclId& id) {
  if (!nccl().error.empty()) return unsupported();
  if (ranks < 1 || rank < 0 || rank >= ranks) {
    return make_error(ErrorCode::kInvalidArgument, "nccl: rank " + std::to_string(rank) + " of " + std::to_string(ranks));
  }
  Communicator c;
  c.state_ = std::make_unique<State>();
  DWS_CUDA(cudaGetDevice(&c.state_->device));
  ncclUniqueId uid;
  std::memcpy(&uid, id.bytes.data(), sizeof(uid));
  DWS_NCCL(nccl().CommInitRank(&c.state_->comm, ranks, uid, rank));
  c.state_->rank = rank;
  c.state_->ranks = ranks;
  DWS_RETURN_IF_ERROR(c.state_->create_streams());
  return c;
}

Result<std::vector<Communicator>> Communicator::init_all(std::span<const int> devices) {
  if (!nccl().error.empty()) return unsupported();
  if (devices.empty()) return make_error(ErrorCode::kInvalidArgument, "nccl: no devices");
  std::vector<ncclComm_t> comms(devices.size());
  DWS_NCCL(nccl().CommInitAll(comms.data(), static_cast<int>(devices.size()), devices.data()));
  std::vector<Communicator> out(devices.size());
  for (size_t i = 0; i < devices.size(); ++i) {
    out[i].state_ = std::make_unique<State>();
    State& s = *out[i].state_;
    s.comm = comms[i];
    s.rank = static_cast<int>(i);
    s.ranks = static_cast<int>(devices.size());
    s.device = devices[i];
  }
  for (size_t i = 0; i < devices.size(); ++i) {
    DeviceGuard guard(devices[i]);
    DWS_RETURN_IF_ERROR(out[i].state_->create_streams());
  }
  return out;
}

Result<BroadcastStats> broadcast_changes(Communicator& communicator, int root, const DeviceChangeSet* changes,
                                         std::span<const DeviceTensor> tensors, const BroadcastOptions& options) {
  if (!nccl().error.empty()) return unsupported();
  Communicator::State* sp = communicator.state();
  if (sp == nullptr) return make_error(ErrorCode::kInvalidArgument, "broadcast: the communicator is empty (moved from?)");
  Communicator::State& s = *sp;
  const bool is_root = s.rank == root;
  const bool receiving = !tensors.empty();
  DeviceGuard guard(s.device);
  const cudaStream_t user = static_cast<cudaStream_t>(options.stream);
  const std::string who = "broadcast (rank " + std::to_string(s.rank) + " of " + std::to_string(s.ranks) + ", root " +
                          std::to_string(root) + ")";
  if (root < 0 || root >= s.ranks) return make_error(ErrorCode::kInvalidArgument, who + ": no such root");

  // Local checks. A rank that refuses must still take part in the header exchange, so that every rank
  // learns of it and returns instead of waiting for buckets that never come.
  std::string refusal;
  std::vector<DType> dtypes;
  std::vector<uint64_t> numels;
  for (const DeviceTensor& t : tensors) {
    dtypes.push_back(t.dtype);
    numels.push_back(t.numel);
  }
  if (options.bucket_bytes < 4096) refusal = "bucket_bytes " + std::to_string(options.bucket_bytes) + " is under 4096";
  if (is_root) {
    if (changes == nullptr) {
      refusal = "the root needs the change set";
    } else {
      std::vector<DType> cd;
      std::vector<uint64_t> cn;
      for (const auto& e : changes->tensors) {
        cd.push_back(e.dtype);
        cn.push_back(e.numel);
      }
      if (receiving && (cd != dtypes || cn != numels)) refusal = "the root's replica tensors do not match its change set";
      dtypes = std::move(cd);
      numels = std::move(cn);
    }
  } else if (!receiving) {
    refusal = "a receiving rank needs its tensors";
  }
  for (size_t i = 0; i < tensors.size() && refusal.empty(); ++i) {
    if (reinterpret_cast<uintptr_t>(tensors[i].data) % dtype_size_bytes(tensors[i].dtype) != 0) {
      refusal = "tensor " + std::to_string(i) + " is not aligned to its elements";
    }
  }

  const uint64_t n = dtypes.size();
  DWS_RETURN_IF_ERROR(s.host_small.reserve(sizeof(Header) + 8 + std::max<uint64_t>(n, 1) * 8));
  if (s.small.size_bytes() < sizeof(Header) + 8 + std::max<uint64_t>(n, 1) * 8) {
    DWS_CUDA(cudaStreamSynchronize(s.stream));
    s.small = DeviceBuffer();
    DWS_ASSIGN_OR_RETURN(s.small, DeviceBuffer::allocate(sizeof(Header) + 8 + std::max<uint64_t>(n, 1) * 8));
  }
  auto* host_header = static_cast<Header*>(s.host_small.data());
  auto* host_flag = reinterpret_cast<int32_t*>(static_cast<std::byte*>(s.host_small.data()) + sizeof(Header));
  auto* host_counts = reinterpret_cast<uint64_t*>(static_cast<std::byte*>(s.host_small.data()) + sizeof(Header) + 8);
  auto* dev_header = static_cast<std::byte*>(s.small.data());
  auto* dev_flag = dev_header + sizeof(Header);
  auto* dev_counts = dev_header + sizeof(Header) + 8;

  // Everything NCCL sends follows the caller's work so far (the root's diff, the receivers' last writes).
  DWS_CUDA(cudaEventRecord(s.entry, user));
  DWS_CUDA(cudaStreamWaitEvent(s.stream, s.entry, 0));

  // 1. Header, then every rank's verdict (max over ranks: 1 when any refuses).
  const uint64_t mine = fingerprint(dtypes, numels);
  if (is_root) {
    *host_header = Header{refusal.empty() ? kMagic : 0, n, mine, changes != nullptr ? changes->total : 0};
    DWS_CUDA(cudaMemcpyAsync(dev_header, host_header, sizeof(Header), cudaMemcpyHostToDevice, s.stream));
  }
  DWS_NCCL(nccl().Broadcast(dev_header, dev_header, sizeof(Header), ncclUint8, root, s.comm, s.stream));
  DWS_CUDA(cudaMemcpyAsync(host_header, dev_header, sizeof(Header), cudaMemcpyDeviceToHost, s.stream));
  DWS_CUDA(cudaStreamSynchronize(s.stream));
  const Header h = *host_header;
  if (refusal.empty() && h.magic == kMagic && (h.tensors != n || h.fingerprint != mine)) {
    refusal = "its tensors do not match the root's: " + std::to_string(n) + " tensors here, " + std::to_string(h.tensors) +
              " at the root, or the same count with other dtypes or sizes";
  }
  *host_flag = refusal.empty() && h.magic == kMagic ? 0 : 1;
  DWS_CUDA(cudaMemcpyAsync(dev_flag, host_flag, sizeof(int32_t), cudaMemcpyHostToDevice, s.stream));
  DWS_NCCL(nccl().AllReduce(dev_flag, dev_flag, 1, ncclInt32, ncclMax, s.comm, s.stream));
  DWS_CUDA(cudaMemcpyAsync(host_flag, dev_flag, sizeof(int32_t), cudaMemcpyDeviceToHost, s.stream));
  DWS_CUDA(cudaStreamSynchronize(s.stream));
  if (!refusal.empty()) return make_error(ErrorCode::kInvalidArgument, who + ": " + refusal + "; nothing was sent");
  if (*host_flag != 0) {
    return make_error(ErrorCode::kInvalidArgument, who + ": another rank refused the broadcast (see its error); nothing was sent");
  }

  // 2. Counts.
  if (is_root) {
    for (uint64_t i = 0; i < n; ++i) host_counts[i] = changes->tensors[i].count;
    DWS_CUDA(cudaMemcpyAsync(dev_counts, host_counts, n * 8, cudaMemcpyHostToDevice, s.stream));
  }
  if (n > 0) {
    DWS_NCCL(nccl().Broadcast(dev_counts, dev_counts, n * 8, ncclUint8, root, s.comm, s.stream));
    DWS_CUDA(cudaMemcpyAsync(host_counts, dev_counts, n * 8, cudaMemcpyDeviceToHost, s.stream));
    DWS_CUDA(cudaStreamSynchronize(s.stream));
  }
  const std::vector<uint64_t> counts(host_counts, host_counts + n);

  // 3. Buckets, double-buffered.
  const std::vector<Bucket> buckets = plan_buckets(dtypes, counts, options.bucket_bytes);
  const std::vector<uint64_t> value_byte = value_layout(dtypes, counts);
  uint64_t slot_bytes = 0;
  for (const Bucket& b : buckets) slot_bytes = std::max(slot_bytes, b.buffer_bytes());
  if (receiving && s.slots[0].size_bytes() < slot_bytes) {
    for (int i = 0; i < 2; ++i) {
      DWS_CUDA(cudaEventSynchronize(s.applied[i]));  // a scatter of the last call may still read the slot
      s.slots[i] = DeviceBuffer();
    }
    for (int i = 0; i < 2; ++i) {
      DWS_ASSIGN_OR_RETURN(s.slots[i], DeviceBuffer::allocate(slot_bytes));
    }
  }
  BroadcastStats stats;
  std::vector<detail::ScatterChunk> chunks;
  std::vector<void*> tensor_data;
  for (const DeviceTensor& t : tensors) tensor_data.push_back(t.data);
  for (size_t k = 0; k < buckets.size(); ++k) {
    const Bucket& b = buckets[k];
    const int slot = static_cast<int>(k % 2);
    auto* buffer = static_cast<std::byte*>(s.slots[slot].data());
    const void* send_positions = nullptr;
    const void* send_values = nullptr;
    if (is_root) {
      send_positions = static_cast<const uint64_t*>(changes->positions.data()) + b.first_change;
      send_values = static_cast<const std::byte*>(changes->target_values.data()) + b.value_begin;
    }
    void* recv_positions = receiving ? static_cast<void*>(buffer) : const_cast<void*>(send_positions);
    void* recv_values = receiving ? static_cast<void*>(buffer + b.value_offset()) : const_cast<void*>(send_values);
    if (receiving) DWS_CUDA(cudaStreamWaitEvent(s.stream, s.applied[slot], 0));  // bucket k - 2 is applied
    DWS_NCCL(nccl().GroupStart());
    const ncclResult_t r1 = nccl().Broadcast(send_positions, recv_positions, b.changes * sizeof(uint64_t), ncclUint8, root, s.comm, s.stream);
    const ncclResult_t r2 = nccl().Broadcast(send_values, recv_values, b.value_end - b.value_begin, ncclUint8, root, s.comm, s.stream);
    DWS_NCCL(nccl().GroupEnd());
    DWS_NCCL(r1);
    DWS_NCCL(r2);
    stats.buckets += 1;
    stats.bytes += b.bytes();
    stats.changes += b.changes;
    if (!receiving) continue;
    DWS_CUDA(cudaEventRecord(s.received[slot], s.stream));
    DWS_CUDA(cudaStreamWaitEvent(user, s.received[slot], 0));
    chunks.clear();
    detail::bucket_chunks(b, dtypes, value_byte, tensor_data, buffer, chunks);
    DWS_RETURN_IF_ERROR(detail::scatter_chunks(chunks.data(), chunks.size(), user).with_context(who));
    DWS_CUDA(cudaEventRecord(s.applied[slot], user));
  }
  DWS_CUDA(cudaStreamSynchronize(s.stream));  // the root's change set is no longer read
  return stats;
}

}  // namespace dws::gpu
