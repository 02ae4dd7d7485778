// Fuzz target: the codecs' decoders, past the payload hash that guards them inside a patch. Each input
// picks an encoding and one tensor of the cropped model (fuzz_common.h) and supplies that encoding's
// payloads and declared change count; the decoder runs against the tensor's real base values.
// Properties (codec/codecs.h's contract): the sink sees only positions that ascend strictly across all
// batches and lie inside the tensor, with one value of the element width each, and never more than the
// declared count; refusals carry a message; nothing crashes, leaks or reads out of bounds.
#include <cstdint>
#include <cstdlib>

#include "fuzz_common.h"

namespace {

struct Reference {
  std::vector<dws::fuzz::Tensor> base;
  // [encoding index][tensor index]
  std::vector<std::vector<dws::codec::EncodedTensor>> encoded;
};

const Reference& reference() {
  static const Reference* r = [] {
    auto* out = new Reference;
    out->base = dws::fuzz::cropped_step(0);
    const auto next = dws::fuzz::cropped_step(1);
    if (out->base.empty() || next.size() != out->base.size()) std::abort();  // needs trajectory-small
    for (dws::Encoding enc : dws::fuzz::kDecodeEncodings) {
      out->encoded.emplace_back();
      for (size_t i = 0; i < out->base.size(); ++i) {
        auto e = dws::fuzz::reference_encoding(enc, out->base[i], next[i]);
        if (!e.ok()) std::abort();
        out->encoded.back().push_back(std::move(*e));
      }
    }
    return out;
  }();
  return *r;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const Reference& ref = reference();
  if (size == 0) return 0;
  const size_t enc_i = data[0] / 16 % std::size(dws::fuzz::kDecodeEncodings), tensor_i = data[0] % 16 % ref.base.size();
  const dws::codec::EncodedTensor& shape_of = ref.encoded[enc_i][tensor_i];
  dws::fuzz::DecodeInput in;
  if (!dws::fuzz::parse_decode_input(std::span(data, size), shape_of.payloads.size(), &in)) return 0;
  const dws::fuzz::Tensor& base = ref.base[tensor_i];
  const size_t width = dws::dtype_size_bytes(base.dtype);
  std::vector<uint64_t> shapes(in.payloads.size());
  std::vector<dws::codec::PayloadView> views;
  for (size_t k = 0; k < in.payloads.size(); ++k) {
    const auto& p = shape_of.payloads[k];
    const size_t w = dws::dtype_size_bytes(p.dtype);
    in.payloads[k].resize(in.payloads[k].size() / w * w);
    shapes[k] = in.payloads[k].size() / w;
    views.push_back({p.role, p.dtype, std::span(&shapes[k], 1), in.payloads[k]});
  }
  const dws::codec::DecodeParams params{dws::fuzz::kDecodeEncodings[enc_i], base.dtype, dws::fuzz::numel_of(base), in.changes,
                                        shape_of.index_dtype};
  if (!dws::codec::check_payload_shapes(params, views).ok()) return 0;
  uint64_t seen = 0;
  int64_t last = -1;
  auto sink = [&](std::span<const uint64_t> positions, std::span<const std::byte> values) -> dws::Status {
    if (values.size() != positions.size() * width) std::abort();
    for (uint64_t p : positions) {
      if (p >= params.numel || static_cast<int64_t>(p) <= last) std::abort();
      last = static_cast<int64_t>(p);
    }
    seen += positions.size();
    if (seen > params.changes) std::abort();
    return dws::Status::Ok();
  };
  dws::Status st = dws::codec::decode_changes(params, views, base.bytes, sink);
  if (!st.ok() && st.message().empty()) std::abort();
  if (st.ok() && seen != params.changes) std::abort();  // accepted: exactly the declared changes
  return 0;
}
