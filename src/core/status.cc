#include "dws/status.h"

namespace dws {

std::string_view error_code_name(ErrorCode code) {
  switch (code) {
    case ErrorCode::kOk: return "OK";
    case ErrorCode::kInvalidArgument: return "E_INVALID_ARGUMENT";
    case ErrorCode::kIo: return "E_IO";
    case ErrorCode::kNotFound: return "E_NOT_FOUND";
    case ErrorCode::kExists: return "E_EXISTS";
    case ErrorCode::kHeaderSize: return "E_HEADER_SIZE";
    case ErrorCode::kHeaderJson: return "E_HEADER_JSON";
    case ErrorCode::kDtype: return "E_DTYPE";
    case ErrorCode::kShape: return "E_SHAPE";
    case ErrorCode::kOffsets: return "E_OFFSETS";
    case ErrorCode::kDuplicate: return "E_DUPLICATE";
    case ErrorCode::kPatchMetadata: return "E_PATCH_METADATA";
    case ErrorCode::kPayloadHash: return "E_PAYLOAD_HASH";
    case ErrorCode::kPositions: return "E_POSITIONS";
    case ErrorCode::kDecode: return "E_DECODE";
    case ErrorCode::kBaseMismatch: return "E_BASE_MISMATCH";
    case ErrorCode::kTargetMismatch: return "E_TARGET_MISMATCH";
    case ErrorCode::kUnsupported: return "E_UNSUPPORTED";
    case ErrorCode::kPendingJournal: return "E_PENDING_JOURNAL";
    case ErrorCode::kInternal: return "E_INTERNAL";
    case ErrorCode::kDevice: return "E_DEVICE";
    case ErrorCode::kDenied: return "E_DENIED";
    case ErrorCode::kUnavailable: return "E_UNAVAILABLE";
    case ErrorCode::kAuth: return "E_AUTH";
  }
  return "E_UNKNOWN";
}

std::string Status::to_string() const {
  if (ok()) return "OK";
  std::string out(error_code_name(code_));
  out += ": ";
  out += message_;
  return out;
}

Status Status::with_context(std::string_view context) const {
  if (ok()) return *this;
  std::string msg(context);
  msg += ": ";
  msg += message_;
  return Status(code_, std::move(msg));
}

}  // namespace dws
