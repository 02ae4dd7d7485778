// patch_internal.h — the "dws.patch" metadata document <-> PatchHeader, payload views (internal).
#pragma once

#include <string>
#include <string_view>

#include <vector>

#include "codec/codecs.h"
#include "dws/patch.h"

namespace dws::patch_json {

inline constexpr std::string_view kFormatKey = "dws.format";
inline constexpr std::string_view kFormatName = "dws-patch";
inline constexpr std::string_view kVersionKey = "dws.format_version";
inline constexpr std::string_view kDocumentKey = "dws.patch";
inline constexpr std::string_view kDocumentDigestKey = "dws.patch_digest";  // XXH3-128 hex of the document text

// Payload tensor name for a tensor's role: "<name>:<role>".
std::string payload_name(std::string_view tensor, std::string_view role);

std::string to_json(const PatchHeader& header);
// Parses and checks the document's own schema; payload resolution is the caller's.
Result<PatchHeader> from_json(std::string_view text);

}  // namespace dws::patch_json

namespace dws {
// Writes a patch file atomically: the header's document (with its digest) and the payload tensors, which
// must be the ones the header's tensors name, in any order.
Status write_patch_file(const std::string& patch_path, const PatchHeader& header, std::span<const TensorWrite> payloads);

// The payload tensors of one patch tensor as the codec sees them (role = name suffix after "<tensor>:").
std::vector<codec::PayloadView> payload_views(const Patch& patch, const PatchTensor& tensor);
}  // namespace dws
