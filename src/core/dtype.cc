#include "dws/dtype.h"

#include <string>

namespace dws {

namespace {
struct DTypeInfo {
  DType dtype;
  std::string_view name;
  size_t size_bytes;
};
constexpr DTypeInfo kInfo[] = {
    {DType::kBool, "BOOL", 1},       {DType::kU8, "U8", 1},     {DType::kI8, "I8", 1},
    {DType::kF8_E4M3, "F8_E4M3", 1}, {DType::kF8_E5M2, "F8_E5M2", 1},
    {DType::kI16, "I16", 2},         {DType::kU16, "U16", 2},   {DType::kF16, "F16", 2},
    {DType::kBF16, "BF16", 2},       {DType::kI32, "I32", 4},   {DType::kU32, "U32", 4},
    {DType::kF32, "F32", 4},         {DType::kI64, "I64", 8},   {DType::kU64, "U64", 8},
    {DType::kF64, "F64", 8},
};
}  // namespace

size_t dtype_size_bytes(DType dtype) { return kInfo[static_cast<size_t>(dtype)].size_bytes; }
std::string_view dtype_name(DType dtype) { return kInfo[static_cast<size_t>(dtype)].name; }

bool dtype_is_float(DType d) {
  return d == DType::kF8_E4M3 || d == DType::kF8_E5M2 || d == DType::kF16 || d == DType::kBF16 || d == DType::kF32 ||
         d == DType::kF64;
}

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto& info : kInfo) {
    if (info.name == name) return info.dtype;
  }
  return std::nullopt;
}

std::optional<uint64_t> checked_numel(std::span<const uint64_t> shape) {
  uint64_t n = 1;
  for (uint64_t d : shape) {
    if (__builtin_mul_overflow(n, d, &n)) return std::nullopt;
  }
  return n;
}

std::optional<uint64_t> checked_size_bytes(DType dtype, std::span<const uint64_t> shape) {
  auto n = checked_numel(shape);
  if (!n) return std::nullopt;
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(*n, static_cast<uint64_t>(dtype_size_bytes(dtype)), &bytes)) return std::nullopt;
  return bytes;
}

std::string shape_string(std::span<const uint64_t> shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(shape[i]);
  }
  out += "]";
  return out;
}

}  // namespace dws
