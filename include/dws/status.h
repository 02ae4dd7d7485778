// dws/status.h — errors as values.
//
// Every fallible library function returns Status or Result<T>; nothing throws across the public API
// and nothing aborts on bad input. Error codes are stable (their numbers and names are part of the
// format spec, docs/patch-format.md §Errors); messages are for humans and say which function, which
// object, expected vs. found.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace dws {

// Stable numbering: never renumber, only append.
enum class ErrorCode : uint8_t {
  kOk = 0,
  kInvalidArgument = 1,  // the caller passed something unusable (bad option, mismatched inputs)
  kIo = 2,               // the operating system refused a read/write/mmap/fsync/rename
  kNotFound = 3,         // a file or tensor that must exist does not
  kExists = 4,           // an output that must not exist does
  kHeaderSize = 5,       // safetensors header length out of bounds or above the limit
  kHeaderJson = 6,       // header is not valid JSON or does not follow the schema
  kDtype = 7,            // unknown or unsupported dtype
  kShape = 8,            // shape invalid, element count overflows, or size != dtype*numel
  kOffsets = 9,          // data offsets out of bounds, overlapping, or leaving holes
  kDuplicate = 10,       // duplicate tensor name (in a file or across shards)
  kPatchMetadata = 11,   // patch metadata missing, malformed, or inconsistent with its tensors
  kPayloadHash = 12,     // a payload's hash does not match the one recorded in the patch
  kPositions = 13,       // a position is out of range, unsorted, or duplicated
  kDecode = 14,          // a compressed payload fails to decode or decodes to the wrong size
  kBaseMismatch = 15,    // the base given to apply is not the base the patch was made from
  kTargetMismatch = 16,  // the result of an apply does not hash to the recorded target
  kUnsupported = 17,     // valid input the library does not handle (e.g. a newer format version)
  kPendingJournal = 18,  // an interrupted in-place apply left a journal; recover before use
  kInternal = 19,        // a bug in dws
  kDevice = 20,          // a CUDA or NCCL call failed (device lost, out of device memory, peer gone)
  kDenied = 21,          // a store refused the credentials or the request (HTTP 401/403); retrying will not help
  kUnavailable = 22,     // a store could not be reached, or kept failing, until its retry deadline passed
  kAuth = 23,            // a version is not signed by the receiver's key: unsigned, another key, or altered (dws/auth.h)
};

// Stable upper-case name, e.g. "E_BASE_MISMATCH".
std::string_view error_code_name(ErrorCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(ErrorCode code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status Ok() { return Status(); }

  bool ok() const { return code_ == ErrorCode::kOk; }
  ErrorCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "E_NAME: message"
  std::string to_string() const;

  // Prefixes the message with context ("apply: "), keeping the code.
  Status with_context(std::string_view context) const;

 private:
  ErrorCode code_ = ErrorCode::kOk;
  std::string message_;
};

inline Status make_error(ErrorCode code, std::string message) { return Status(code, std::move(message)); }

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}        // NOLINT(google-explicit-constructor)
  Result(Status status) : v_(std::move(status)) {}  // NOLINT(google-explicit-constructor)

  bool ok() const { return std::holds_alternative<T>(v_); }
  // Valid only when !ok(); Ok status otherwise.
  Status status() const { return ok() ? Status() : std::get<Status>(v_); }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace dws

// Internal convenience for early returns; used in .cc files only.
#define DWS_RETURN_IF_ERROR(expr)            \
  do {                                       \
    ::dws::Status dws_status_ = (expr);      \
    if (!dws_status_.ok()) return dws_status_; \
  } while (0)

#define DWS_CONCAT_INNER(a, b) a##b
#define DWS_CONCAT(a, b) DWS_CONCAT_INNER(a, b)
#define DWS_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return tmp.status();             \
  lhs = std::move(tmp).value()
#define DWS_ASSIGN_OR_RETURN(lhs, expr) DWS_ASSIGN_OR_RETURN_IMPL(DWS_CONCAT(dws_result_, __LINE__), lhs, expr)
