// dws/dtype.h — the element types of the safetensors spec.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

namespace dws {

enum class DType : uint8_t {
  kBool, kU8, kI8, kF8_E4M3, kF8_E5M2, kI16, kU16, kF16, kBF16, kI32, kU32, kF32, kI64, kU64, kF64,
};

inline constexpr DType kAllDTypes[] = {
    DType::kBool, DType::kU8,   DType::kI8,  DType::kF8_E4M3, DType::kF8_E5M2,
    DType::kI16,  DType::kU16,  DType::kF16, DType::kBF16,    DType::kI32,
    DType::kU32,  DType::kF32,  DType::kI64, DType::kU64,     DType::kF64,
};

// Bytes per element: 1, 2, 4 or 8.
size_t dtype_size_bytes(DType dtype);
// Floating-point dtypes (F8_E4M3, F8_E5M2, F16, BF16, F32, F64): sign, exponent and mantissa fields.
bool dtype_is_float(DType dtype);
// The safetensors spelling: "BOOL", "U8", ..., "F8_E4M3", "BF16", ...
std::string_view dtype_name(DType dtype);
std::optional<DType> dtype_from_name(std::string_view name);

// Product of dims; nullopt on uint64 overflow. The empty shape (0-d tensor) has one element.
std::optional<uint64_t> checked_numel(std::span<const uint64_t> shape);
// Product of numel and element size; nullopt on overflow.
std::optional<uint64_t> checked_size_bytes(DType dtype, std::span<const uint64_t> shape);

// "[2, 3]"
std::string shape_string(std::span<const uint64_t> shape);

}  // namespace dws
