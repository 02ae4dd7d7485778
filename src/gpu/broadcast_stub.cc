// broadcast_stub.cc — dws/gpu_broadcast.h in builds without CUDA or without nccl.h: every call is
// E_UNSUPPORTED (the plan, in broadcast_plan.cc, is host logic and works everywhere).
#include "dws/gpu_broadcast.h"

namespace dws::gpu {

namespace {
#ifdef DWS_HAVE_CUDA
constexpr const char* kWhy = "built without NCCL support (nccl.h was not found when dws was configured)";
#else
constexpr const char* kWhy = "built without CUDA, so without the NCCL transport (configure with the CUDA toolkit)";
#endif
Status unsupported() { return make_error(ErrorCode::kUnsupported, kWhy); }
}  // namespace

struct Communicator::State {};

Result<std::string> nccl_version() { return unsupported(); }
Result<NcclId> nccl_unique_id() { return unsupported(); }
Communicator::Communicator() = default;
Communicator::Communicator(Communicator&&) noexcept = default;
Communicator& Communicator::operator=(Communicator&&) noexcept = default;
Communicator::~Communicator() = default;
int Communicator::rank() const { return -1; }
int Communicator::ranks() const { return 0; }
int Communicator::device() const { return -1; }
Result<Communicator> Communicator::init(int, int, const NcclId&) { return unsupported(); }
Result<std::vector<Communicator>> Communicator::init_all(std::span<const int>) { return unsupported(); }
Result<BroadcastStats> broadcast_changes(Communicator&, int, const DeviceChangeSet*, std::span<const DeviceTensor>,
                                         const BroadcastOptions&) {
  return unsupported();
}

}  // namespace dws::gpu
