// Fuzz target: the safetensors header parser (every file dws opens goes through it first).
// Property: any input is parsed or refused with an error code; nothing crashes, leaks or reads out of
// bounds; an accepted header's tensors all lie inside the input.
#include <cstdint>
#include <cstdlib>

#include "dws/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  auto h = dws::parse_safetensors(bytes);
  if (h.ok()) {
    const uint64_t data_bytes = size - h->data_offset();
    for (const auto& t : h->tensors) {
      if (t.data_begin > t.data_end || t.data_end > data_bytes) std::abort();
      if (t.size_bytes() % dws::dtype_size_bytes(t.dtype) != 0) std::abort();
    }
  } else if (h.status().message().empty()) {
    std::abort();  // every refusal says why
  }
  return 0;
}
