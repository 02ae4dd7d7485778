// kernels_stub.cc — kernels.h for builds without CUDA: every call is E_UNSUPPORTED.
#include "gpu/gpu_internal.h"
#include "gpu/kernels.h"

namespace dws::gpu::detail {

bool available() { return false; }
Status device_count(int*) { return no_cuda(); }
Status device_info(int, DeviceInfo*) { return no_cuda(); }
Status set_device(int) { return no_cuda(); }
Status malloc_device(void**, uint64_t) { return no_cuda(); }
void free_device(void*) {}
Status malloc_pinned(void**, uint64_t) { return no_cuda(); }
void free_pinned(void*) {}
Status copy_async(void*, const void*, uint64_t, Stream) { return no_cuda(); }
Status sync(Stream) { return no_cuda(); }
uint64_t diff_tile_elems(size_t elem_size) { return 16384 / elem_size; }
DiffPlan diff_plan(uint64_t, uint64_t, uint64_t) { return {}; }
Status diff_count(const DiffTensor*, const DiffPlan&, void*, uint64_t*, Stream) { return no_cuda(); }
Status diff_compact(const DiffTensor*, const DiffPlan&, void*, const uint64_t*, uint64_t*, void*, void*, Stream) { return no_cuda(); }
Status scatter(void*, DType, codec::ChangeOp, const uint64_t*, const void*, uint64_t, Stream) { return no_cuda(); }
Status scatter_chunks(const ScatterChunk*, uint64_t, Stream) { return no_cuda(); }
Status gather_words(const WordGatherChunk*, uint64_t, Stream) { return no_cuda(); }
Status symbolize_chunks(const SymbolChunk*, uint64_t, Stream) { return no_cuda(); }
Status pack_chunks(const SymbolChunk*, uint64_t, Stream) { return no_cuda(); }
Status memset_async(void*, int, uint64_t, Stream) { return no_cuda(); }

}  // namespace dws::gpu::detail
