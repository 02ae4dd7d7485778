// Fuzz target: apply against a fixed base. The base is a small model cropped from trajectory-small
// step 0 (fuzz_common.h), held in memory with its verified digests; each input is a patch applied to it
// with apply_patch_to_tensors. Properties: a refused patch leaves every base byte untouched; an accepted
// one leaves tensors whose recomputed digests are the ones the apply reported (then the base is restored).
#include <cstdint>
#include <cstdlib>

#include "fuzz_common.h"

namespace {

struct Base {
  std::vector<dws::fuzz::Tensor> pristine, work;
  dws::TensorDigests digests;
};

Base& base() {
  static Base* b = [] {
    auto* out = new Base;
    out->pristine = dws::fuzz::cropped_step(0);
    if (out->pristine.empty()) std::abort();  // needs ../shared/data/trajectory-small
    out->work = out->pristine;
    for (const auto& t : out->pristine) out->digests[t.name] = dws::tensor_digest(t.name, t.dtype, t.shape, t.bytes);
    return out;
  }();
  return *b;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Base& b = base();
  auto patch = dws::Patch::from_bytes(std::span(reinterpret_cast<const std::byte*>(data), size));
  if (!patch.ok()) return 0;
  std::vector<dws::TensorView> views;
  for (auto& t : b.work) views.push_back({t.name, t.dtype, t.shape, t.bytes});
  dws::TensorDigests digests = b.digests;
  auto r = dws::apply_patch_to_tensors(*patch, views, digests);
  if (!r.ok()) {
    for (size_t i = 0; i < b.work.size(); ++i) {
      if (b.work[i].bytes != b.pristine[i].bytes) std::abort();  // refused, yet the base changed
    }
    return 0;
  }
  for (const auto& t : b.work) {
    if (digests.at(t.name) != dws::tensor_digest(t.name, t.dtype, t.shape, t.bytes)) std::abort();
  }
  for (size_t i = 0; i < b.work.size(); ++i) b.work[i].bytes = b.pristine[i].bytes;
  return 0;
}
