// in_memory.h — the checks shared by the applies into tensors held in memory: apply_patch_to_tensors (host)
// and gpu::apply_patch_to_device_tensors (device). Such tensors cannot change their set or shapes, and the
// caller vouches for their digests. `what` prefixes every message ("apply to tensors: ").
#pragma once

#include <string>

#include "dws/checkpoint.h"
#include "dws/patch.h"
#include "dws/status.h"

namespace dws::in_memory {

// E_UNSUPPORTED when the patch removes a tensor.
Status check_no_removals(const PatchHeader& header, const std::string& what);
// E_UNSUPPORTED unless the patch only modifies tensor `t` (adding or re-creating one needs a reload).
Status check_modified(const PatchTensor& t, const std::string& what);
// The vouched digest of t's tensor, which must be the patch's base digest: E_INVALID_ARGUMENT when `digests`
// has none, E_BASE_MISMATCH when it differs.
Result<Digest128> check_base_digest(const PatchTensor& t, const TensorDigests& digests, const std::string& what);
// E_TARGET_MISMATCH: t's result has digest `got`, not its target digest.
Status target_mismatch(const std::string& what, const PatchTensor& t, const Digest128& got);

}  // namespace dws::in_memory
