#include "dws/safetensors.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <unordered_set>

#include "format/json_strict.h"

#include "core/file_io.h"

namespace dws {

using json = nlohmann::json;

namespace {

Status header_error(ErrorCode code, const std::string& msg) { return make_error(code, "safetensors header: " + msg); }

std::string shown_name(std::string_view name) {
  // Names are hostile: show at most 200 bytes, escaped as JSON.
  std::string shown(name.substr(0, 200));
  std::string out = json(shown).dump(-1, ' ', true, json::error_handler_t::replace);
  if (name.size() > 200) out += "...";
  return out;
}

uint64_t read_le64(const std::byte* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint64_t>(p[i]);
  return v;
}

Result<uint64_t> get_u64(const json& v, const std::string& what) {
  if (!v.is_number_unsigned()) return header_error(ErrorCode::kHeaderJson, what + " must be a non-negative integer");
  return v.get<uint64_t>();
}

}  // namespace

const TensorInfo* SafetensorsHeader::find(std::string_view name) const {
  auto it = std::lower_bound(by_name.begin(), by_name.end(), name,
                             [&](uint32_t i, std::string_view n) { return tensors[i].name < n; });
  if (it == by_name.end() || tensors[*it].name != name) return nullptr;
  return &tensors[*it];
}

Result<SafetensorsHeader> parse_safetensors(std::span<const std::byte> file_bytes, const ParseLimits& limits) {
  SafetensorsHeader out;
  const uint64_t file_size = file_bytes.size();
  if (file_size < 8) {
    return header_error(ErrorCode::kHeaderSize, "file is " + std::to_string(file_size) + " bytes, shorter than the 8-byte length prefix");
  }
  const uint64_t n = read_le64(file_bytes.data());
  if (n > limits.max_header_bytes) {
    return header_error(ErrorCode::kHeaderSize, "header length " + std::to_string(n) + " exceeds the limit of " +
                                                    std::to_string(limits.max_header_bytes) + " bytes");
  }
  if (n > file_size - 8) {
    return header_error(ErrorCode::kHeaderSize, "header length " + std::to_string(n) + " runs past the end of the " +
                                                    std::to_string(file_size) + "-byte file");
  }
  if (n < 2 || file_bytes[8] != std::byte{'{'}) {
    return header_error(ErrorCode::kHeaderJson, "header must start with '{'");
  }
  out.header_size_bytes = n;
  const uint64_t data_size = file_size - 8 - n;
  std::string_view text(reinterpret_cast<const char*>(file_bytes.data() + 8), n);
  DWS_ASSIGN_OR_RETURN(json doc, parse_json_strict(text, "safetensors header"));
  if (!doc.is_object()) return header_error(ErrorCode::kHeaderJson, "top level must be an object");

  out.tensors.reserve(doc.size());
  for (auto& [key, value] : doc.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) return header_error(ErrorCode::kHeaderJson, "__metadata__ must be an object");
      for (auto& [mk, mv] : value.items()) {
        if (!mv.is_string()) return header_error(ErrorCode::kHeaderJson, "__metadata__ value of " + shown_name(mk) + " must be a string");
        out.metadata.emplace(mk, mv.get<std::string>());
      }
      continue;
    }
    const std::string ctx = "tensor " + shown_name(key);
    if (key.empty()) return header_error(ErrorCode::kHeaderJson, "empty tensor name");
    if (key.size() > limits.max_name_bytes) {
      return header_error(ErrorCode::kHeaderJson, ctx + ": name is " + std::to_string(key.size()) +
                                                      " bytes, above the limit of " + std::to_string(limits.max_name_bytes));
    }
    // A NUL would cut the name short wherever it meets a C string (logs, paths, other tools).
    if (key.find('\0') != std::string::npos) return header_error(ErrorCode::kHeaderJson, ctx + ": name contains a NUL byte");
    if (!value.is_object()) return header_error(ErrorCode::kHeaderJson, ctx + " must be an object");
    for (auto& [field, _] : value.items()) {
      if (field != "dtype" && field != "shape" && field != "data_offsets") {
        return header_error(ErrorCode::kHeaderJson, ctx + ": unknown field " + shown_name(field));
      }
    }
    if (!value.contains("dtype") || !value.contains("shape") || !value.contains("data_offsets")) {
      return header_error(ErrorCode::kHeaderJson, ctx + " needs dtype, shape and data_offsets");
    }
    TensorInfo info;
    info.name = key;
    const json& dt = value["dtype"];
    if (!dt.is_string()) return header_error(ErrorCode::kHeaderJson, ctx + ": dtype must be a string");
    auto dtype = dtype_from_name(dt.get_ref<const std::string&>());
    if (!dtype) return header_error(ErrorCode::kDtype, ctx + ": unknown dtype " + shown_name(dt.get_ref<const std::string&>()));
    info.dtype = *dtype;
    const json& shape = value["shape"];
    if (!shape.is_array()) return header_error(ErrorCode::kHeaderJson, ctx + ": shape must be an array");
    if (shape.size() > limits.max_rank) {
      return header_error(ErrorCode::kShape, ctx + ": rank " + std::to_string(shape.size()) + " above the limit of " +
                                                 std::to_string(limits.max_rank));
    }
    for (const json& d : shape) {
      DWS_ASSIGN_OR_RETURN(uint64_t dim, get_u64(d, ctx + ": shape entries"));
      info.shape.push_back(dim);
    }
    const json& offs = value["data_offsets"];
    if (!offs.is_array() || offs.size() != 2) {
      return header_error(ErrorCode::kHeaderJson, ctx + ": data_offsets must be [begin, end]");
    }
    DWS_ASSIGN_OR_RETURN(info.data_begin, get_u64(offs[0], ctx + ": data_offsets"));
    DWS_ASSIGN_OR_RETURN(info.data_end, get_u64(offs[1], ctx + ": data_offsets"));
    if (info.data_begin > info.data_end) {
      return header_error(ErrorCode::kOffsets, ctx + ": data_offsets begin " + std::to_string(info.data_begin) +
                                                   " > end " + std::to_string(info.data_end));
    }
    if (info.data_end > data_size) {
      return header_error(ErrorCode::kOffsets, ctx + ": data_offsets end " + std::to_string(info.data_end) +
                                                   " beyond the data section of " + std::to_string(data_size) + " bytes");
    }
    auto expected = checked_size_bytes(info.dtype, info.shape);
    if (!expected) return header_error(ErrorCode::kShape, ctx + ": shape " + shape_string(info.shape) + " overflows");
    if (*expected != info.size_bytes()) {
      return header_error(ErrorCode::kShape, ctx + ": " + std::string(dtype_name(info.dtype)) + " " +
                                                 shape_string(info.shape) + " needs " + std::to_string(*expected) +
                                                 " bytes, data_offsets span " + std::to_string(info.size_bytes()));
    }
    out.tensors.push_back(std::move(info));
  }

  std::sort(out.tensors.begin(), out.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.data_begin != b.data_begin ? a.data_begin < b.data_begin : a.data_end < b.data_end;
  });
  uint64_t cursor = 0;
  for (const TensorInfo& t : out.tensors) {
    if (t.data_begin < cursor) {
      return header_error(ErrorCode::kOffsets, "tensor " + shown_name(t.name) + " at [" + std::to_string(t.data_begin) + ", " +
                                                   std::to_string(t.data_end) + ") overlaps the previous tensor ending at " +
                                                   std::to_string(cursor));
    }
    if (t.data_begin > cursor) {
      return header_error(ErrorCode::kOffsets, "hole of " + std::to_string(t.data_begin - cursor) + " bytes at offset " +
                                                   std::to_string(cursor) + " before tensor " + shown_name(t.name));
    }
    cursor = t.data_end;
  }
  if (cursor != data_size) {
    return header_error(ErrorCode::kOffsets, "tensors cover " + std::to_string(cursor) + " bytes of a " +
                                                 std::to_string(data_size) + "-byte data section");
  }
  out.by_name.resize(out.tensors.size());
  for (uint32_t i = 0; i < out.by_name.size(); ++i) out.by_name[i] = i;
  std::sort(out.by_name.begin(), out.by_name.end(),
            [&](uint32_t a, uint32_t b) { return out.tensors[a].name < out.tensors[b].name; });
  return out;
}

// ---- SafetensorsFile ----

struct SafetensorsFile::Impl {
  io::MappedFile map;
};

SafetensorsFile::SafetensorsFile() = default;
SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&&) noexcept = default;
SafetensorsFile::~SafetensorsFile() = default;

Result<SafetensorsFile> SafetensorsFile::open(const std::string& path, Mode mode, const ParseLimits& limits) {
  SafetensorsFile f;
  f.impl_ = std::make_unique<Impl>();
  DWS_ASSIGN_OR_RETURN(f.impl_->map, io::MappedFile::open(path, mode == Mode::kReadOnly ? io::MappedFile::Mode::kReadOnly
                                                                                      : io::MappedFile::Mode::kReadWrite));
  auto header = parse_safetensors(f.impl_->map.bytes(), limits);
  if (!header.ok()) return header.status().with_context("'" + path + "'");
  f.header_ = std::move(header).value();
  return f;
}

const std::string& SafetensorsFile::path() const { return impl_->map.path(); }
std::span<const std::byte> SafetensorsFile::file_bytes() const { return impl_->map.bytes(); }
std::span<std::byte> SafetensorsFile::mutable_file_bytes() { return impl_->map.mutable_bytes(); }

std::span<const std::byte> SafetensorsFile::tensor_bytes(const TensorInfo& info) const {
  return file_bytes().subspan(header_.data_offset() + info.data_begin, info.size_bytes());
}

std::span<std::byte> SafetensorsFile::mutable_tensor_bytes(const TensorInfo& info) {
  return mutable_file_bytes().subspan(header_.data_offset() + info.data_begin, info.size_bytes());
}

Status SafetensorsFile::sync() { return impl_->map.sync(); }

// ---- writer ----

namespace {
Result<std::string> build_header_or_throw(std::span<const TensorSpec> tensors, const FileMetadata& metadata) {
  std::string text = "{";
  bool first = true;
  if (!metadata.empty()) {
    json meta = json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    text += "\"__metadata__\":" + meta.dump(-1, ' ', false, json::error_handler_t::strict);
    first = false;
  }
  std::unordered_set<std::string_view> seen;
  uint64_t offset = 0;
  for (const TensorSpec& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__") {
      return make_error(ErrorCode::kInvalidArgument, "write safetensors: invalid tensor name " + shown_name(t.name));
    }
    if (!seen.insert(t.name).second) {
      return make_error(ErrorCode::kDuplicate, "write safetensors: duplicate tensor name " + shown_name(t.name));
    }
    auto size = checked_size_bytes(t.dtype, t.shape);
    uint64_t end = 0;
    if (!size || __builtin_add_overflow(offset, *size, &end)) {
      return make_error(ErrorCode::kShape, "write safetensors: tensor " + shown_name(t.name) + " size overflows");
    }
    json shape = json::array();
    for (uint64_t d : t.shape) shape.push_back(d);
    if (!first) text += ",";
    first = false;
    text += json(t.name).dump(-1, ' ', false, json::error_handler_t::strict);
    text += ":{\"dtype\":\"" + std::string(dtype_name(t.dtype)) + "\",\"shape\":" + shape.dump() +
            ",\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(end) + "]}";
    offset = end;
  }
  text += "}";
  // Pad with spaces so the data section starts 8-byte aligned, as the reference writer does.
  while (text.size() % 8 != 0) text += ' ';
  return text;
}
}  // namespace

Result<std::string> build_safetensors_header(std::span<const TensorSpec> tensors, const FileMetadata& metadata) {
  try {
    return build_header_or_throw(tensors, metadata);
  } catch (const json::exception& e) {  // invalid UTF-8 in a name or metadata value
    return make_error(ErrorCode::kInvalidArgument, std::string("write safetensors: ") + e.what());
  }
}

struct SafetensorsWriter::Impl {
  io::AtomicOutputFile file;
};

SafetensorsWriter::SafetensorsWriter() = default;
SafetensorsWriter::SafetensorsWriter(SafetensorsWriter&&) noexcept = default;
SafetensorsWriter& SafetensorsWriter::operator=(SafetensorsWriter&&) noexcept = default;
SafetensorsWriter::~SafetensorsWriter() = default;

Result<SafetensorsWriter> SafetensorsWriter::create(const std::string& final_path, std::vector<TensorSpec> tensors,
                                                    const FileMetadata& metadata) {
  DWS_ASSIGN_OR_RETURN(std::string header, build_safetensors_header(tensors, metadata));
  SafetensorsWriter w;
  w.tensors_ = std::move(tensors);
  uint64_t offset = 8 + header.size();
  for (const TensorSpec& t : w.tensors_) {
    w.offsets_.push_back(offset);
    offset += *checked_size_bytes(t.dtype, t.shape);
  }
  w.impl_ = std::make_unique<Impl>();
  DWS_ASSIGN_OR_RETURN(w.impl_->file, io::AtomicOutputFile::create(final_path, offset));
  std::byte* p = w.impl_->file.bytes().data();
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) p[i] = static_cast<std::byte>((n >> (8 * i)) & 0xFF);
  std::memcpy(p + 8, header.data(), header.size());
  return w;
}

std::span<std::byte> SafetensorsWriter::tensor_data(size_t i) {
  return impl_->file.bytes().subspan(offsets_[i], *checked_size_bytes(tensors_[i].dtype, tensors_[i].shape));
}

Status SafetensorsWriter::commit() { return impl_->file.commit(); }
Result<std::string> SafetensorsWriter::sync_and_release() { return impl_->file.sync_and_release(); }

Status write_safetensors(const std::string& path, std::span<const TensorWrite> tensors, const FileMetadata& metadata) {
  std::vector<TensorSpec> specs;
  specs.reserve(tensors.size());
  for (const TensorWrite& t : tensors) {
    auto size = checked_size_bytes(t.spec.dtype, t.spec.shape);
    if (!size || *size != t.bytes.size()) {
      return make_error(ErrorCode::kShape, "write safetensors: tensor " + shown_name(t.spec.name) + " has " +
                                               std::to_string(t.bytes.size()) + " bytes for " +
                                               std::string(dtype_name(t.spec.dtype)) + " " + shape_string(t.spec.shape));
    }
    specs.push_back(t.spec);
  }
  DWS_ASSIGN_OR_RETURN(SafetensorsWriter w, SafetensorsWriter::create(path, std::move(specs), metadata));
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!tensors[i].bytes.empty()) std::memcpy(w.tensor_data(i).data(), tensors[i].bytes.data(), tensors[i].bytes.size());
  }
  return w.commit();
}

}  // namespace dws
