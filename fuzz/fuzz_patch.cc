// Fuzz target: the patch parser and every decoder behind it, without a base. Patch::from_bytes checks the
// container, the metadata document and its digest; verify() checks the payload hashes and decodes every
// tensor that needs no base; patch_positions decodes each tensor's positions. Property: any input is
// accepted or refused with a message; nothing crashes, leaks or reads out of bounds; positions of an
// accepted tensor ascend strictly and lie inside it.
#include <cstdint>
#include <cstdlib>

#include "dws/patch.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto patch = dws::Patch::from_bytes(std::span(reinterpret_cast<const std::byte*>(data), size));
  if (!patch.ok()) {
    if (patch.status().message().empty()) std::abort();
    return 0;
  }
  (void)patch->verify(1);
  for (const dws::PatchTensor& t : patch->header().tensors) {
    auto positions = dws::patch_positions(*patch, t.name);
    if (!positions.ok()) continue;
    for (size_t i = 0; i < positions->size(); ++i) {
      if ((*positions)[i] >= t.numel() || (i > 0 && (*positions)[i] <= (*positions)[i - 1])) std::abort();
    }
  }
  return 0;
}
