#include "dws/checkpoint.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "core/file_io.h"
#include "core/thread_pool.h"
#include "format/json_strict.h"

namespace dws {

using json = nlohmann::json;

namespace {

Result<std::vector<std::string>> list_safetensors_files(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) return make_error(ErrorCode::kIo, "open directory '" + dir + "': " + io::errno_text(errno));
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n.size() > 12 && n.compare(n.size() - 12, 12, ".safetensors") == 0 && n[0] != '.') out.push_back(n);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

bool is_plain_file_name(std::string_view name) {
  return !name.empty() && name.size() <= 255 && name != "." && name != ".." &&
         name.find('/') == std::string_view::npos && name.find('\0') == std::string_view::npos;
}

std::string journal_path_for(const std::string& checkpoint_path) {
  return io::is_directory(checkpoint_path) ? checkpoint_path + "/.dws-journal" : checkpoint_path + ".dws-journal";
}

Result<Checkpoint> Checkpoint::open(const std::string& path, const OpenOptions& options) {
  Checkpoint ck;
  ck.path_ = path;
  if (!io::path_exists(path)) return make_error(ErrorCode::kNotFound, "checkpoint '" + path + "' does not exist");
  if (!options.ignore_pending_journal && io::path_exists(journal_path_for(path))) {
    return make_error(ErrorCode::kPendingJournal, "checkpoint '" + path + "' has an interrupted in-place apply (" +
                                                      journal_path_for(path) + "); run 'dws recover " + path + "'");
  }
  std::vector<std::string> files;
  std::map<std::string, std::string> weight_map;  // tensor -> file, when indexed
  ck.layout_.is_directory = io::is_directory(path);
  if (!ck.layout_.is_directory) {
    files.push_back(path);
    ck.layout_.shards.push_back({io::base_name(path), {}, {}});
  } else {
    const std::string index_path = path + "/" + std::string(kIndexFileName);
    if (io::path_exists(index_path)) {
      ck.layout_.has_index = true;
      DWS_ASSIGN_OR_RETURN(std::string text, io::read_file(index_path, kMaxIndexFileBytes));
      DWS_ASSIGN_OR_RETURN(json doc, parse_json_strict(text, "index '" + index_path + "'"));
      auto bad = [&](const std::string& why) { return make_error(ErrorCode::kHeaderJson, "index '" + index_path + "': " + why); };
      if (!doc.is_object()) return bad("not a JSON object");
      if (!doc.contains("weight_map") || !doc["weight_map"].is_object()) return bad("no weight_map object");
      if (doc.contains("metadata")) {
        if (!doc["metadata"].is_object()) return bad("metadata must be an object");
        ck.layout_.index_metadata_json = doc["metadata"].dump();
      }
      std::vector<std::string> shard_names;
      for (auto& [tensor, file] : doc["weight_map"].items()) {
        if (!file.is_string()) return bad("weight_map entry for '" + tensor + "' must be a string");
        const std::string& f = file.get_ref<const std::string&>();
        if (!is_plain_file_name(f)) return bad("shard file name '" + f + "' leaves the directory");
        weight_map.emplace(tensor, f);
        shard_names.push_back(f);
      }
      std::sort(shard_names.begin(), shard_names.end());
      shard_names.erase(std::unique(shard_names.begin(), shard_names.end()), shard_names.end());
      for (auto& f : shard_names) {
        files.push_back(path + "/" + f);
        ck.layout_.shards.push_back({f, {}, {}});
      }
    } else {
      DWS_ASSIGN_OR_RETURN(auto names, list_safetensors_files(path));
      if (names.size() != 1) {
        return make_error(ErrorCode::kNotFound, "directory '" + path + "' has no " + std::string(kIndexFileName) +
                                                    " and " + std::to_string(names.size()) +
                                                    " .safetensors files (need exactly one without an index)");
      }
      files.push_back(path + "/" + names[0]);
      ck.layout_.shards.push_back({names[0], {}, {}});
    }
  }

  for (size_t s = 0; s < files.size(); ++s) {
    DWS_ASSIGN_OR_RETURN(SafetensorsFile f, SafetensorsFile::open(files[s], options.mode));
    ck.shards_.push_back(std::move(f));
  }
  for (uint32_t s = 0; s < ck.shards_.size(); ++s) {
    const SafetensorsHeader& h = ck.shards_[s].header();
    ck.layout_.shards[s].metadata = h.metadata;
    for (const TensorInfo& info : h.tensors) {
      ck.layout_.shards[s].tensors.push_back({info.name, info.dtype, info.shape});
      if (ck.layout_.has_index) {
        auto it = weight_map.find(info.name);
        if (it == weight_map.end() || it->second != ck.layout_.shards[s].file) {
          return make_error(ErrorCode::kHeaderJson, "checkpoint '" + path + "': tensor '" + info.name + "' is in shard '" +
                                                        ck.layout_.shards[s].file + "' but the index says " +
                                                        (it == weight_map.end() ? std::string("nothing") : "'" + it->second + "'"));
        }
      }
      ck.tensors_.push_back({info.name, info.dtype, info.shape, s, &info});
    }
  }
  std::sort(ck.tensors_.begin(), ck.tensors_.end(),
            [](const CheckpointTensor& a, const CheckpointTensor& b) { return a.name < b.name; });
  for (size_t i = 1; i < ck.tensors_.size(); ++i) {
    if (ck.tensors_[i].name == ck.tensors_[i - 1].name) {
      return make_error(ErrorCode::kDuplicate, "checkpoint '" + path + "': tensor '" + ck.tensors_[i].name +
                                                   "' appears in more than one shard");
    }
  }
  if (ck.layout_.has_index && weight_map.size() != ck.tensors_.size()) {
    for (const auto& [name, file] : weight_map) {
      if (!ck.find(name)) {
        return make_error(ErrorCode::kNotFound, "checkpoint '" + path + "': the index maps '" + name + "' to '" + file +
                                                    "', which does not hold it");
      }
    }
  }
  return ck;
}

const CheckpointTensor* Checkpoint::find(std::string_view name) const {
  auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                             [](const CheckpointTensor& t, std::string_view n) { return t.name < n; });
  return it != tensors_.end() && it->name == name ? &*it : nullptr;
}

uint64_t Checkpoint::total_tensor_bytes() const {
  uint64_t total = 0;
  for (const auto& t : tensors_) total += t.size_bytes();
  return total;
}

Status Checkpoint::sync() {
  for (auto& s : shards_) DWS_RETURN_IF_ERROR(s.sync());
  return Status::Ok();
}

// ---- writing ----

namespace {

Status write_index(const std::string& dir, const CheckpointLayout& layout) {
  json meta = json::parse(layout.index_metadata_json, nullptr, false);
  if (meta.is_discarded() || !meta.is_object()) meta = json::object();
  uint64_t total = 0;
  json weight_map = json::object();
  for (const auto& shard : layout.shards) {
    for (const auto& t : shard.tensors) {
      total += *checked_size_bytes(t.dtype, t.shape);
      weight_map[t.name] = shard.file;
    }
  }
  if (meta.contains("total_size")) meta["total_size"] = total;
  json doc = {{"metadata", meta}, {"weight_map", weight_map}};
  return io::write_file_atomic(dir + "/" + std::string(kIndexFileName), doc.dump(2) + "\n");
}

Status write_shard(const std::string& file_path, const CheckpointLayout::Shard& shard, const FillTensorFn& fill) {
  DWS_ASSIGN_OR_RETURN(SafetensorsWriter w, SafetensorsWriter::create(file_path, shard.tensors, shard.metadata));
  for (size_t i = 0; i < w.tensor_count(); ++i) DWS_RETURN_IF_ERROR(fill(w.spec(i), w.tensor_data(i)));
  return w.commit();
}

void remove_tree(const std::string& path) {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
}

}  // namespace

Status write_checkpoint(const std::string& path, const CheckpointLayout& layout, const FillTensorFn& fill,
                        bool overwrite) {
  const bool exists = io::path_exists(path);
  if (exists && !overwrite) return make_error(ErrorCode::kExists, "output '" + path + "' already exists");
  if (!layout.is_directory) {
    if (layout.shards.size() != 1) return make_error(ErrorCode::kInternal, "single-file layout with " + std::to_string(layout.shards.size()) + " shards");
    if (exists && io::is_directory(path)) return make_error(ErrorCode::kExists, "output '" + path + "' is a directory");
    return write_shard(path, layout.shards[0], fill);
  }
  for (const auto& shard : layout.shards) {
    if (!is_plain_file_name(shard.file)) return make_error(ErrorCode::kInvalidArgument, "shard file name '" + shard.file + "' leaves the directory");
  }
  const std::string temp_dir = io::temp_name_for(path);
  if (::mkdir(temp_dir.c_str(), 0755) != 0) {
    return make_error(ErrorCode::kIo, "create directory '" + temp_dir + "': " + io::errno_text(errno));
  }
  auto fail = [&](Status st) { remove_tree(temp_dir); return st; };
  for (const auto& shard : layout.shards) {
    Status st = write_shard(temp_dir + "/" + shard.file, shard, fill);
    if (!st.ok()) return fail(st);
  }
  if (layout.has_index) {
    Status st = write_index(temp_dir, layout);
    if (!st.ok()) return fail(st);
  }
  if (Status st = io::fsync_directory(temp_dir); !st.ok()) return fail(st);
  if (!exists) {
    if (Status st = io::rename_durable(temp_dir, path); !st.ok()) return fail(st);
    return Status::Ok();
  }
  // Replacing an existing directory: swap the two atomically (renameat2 RENAME_EXCHANGE) so the path
  // always names a complete checkpoint, then drop the old one. Filesystems without the exchange
  // (some network filesystems) fall back to move-aside + move-in, which leaves a short window where
  // the path is missing, but never a mix.
  if (::renameat2(AT_FDCWD, temp_dir.c_str(), AT_FDCWD, path.c_str(), RENAME_EXCHANGE) == 0) {
    if (Status st = io::fsync_directory(io::parent_dir(path)); !st.ok()) return st;
    remove_tree(temp_dir);
    return Status::Ok();
  }
  const std::string old_dir = io::temp_name_for(path);
  if (Status st = io::rename_durable(path, old_dir); !st.ok()) return fail(st);
  if (Status st = io::rename_durable(temp_dir, path); !st.ok()) {
    (void)io::rename_durable(old_dir, path);
    return fail(st);
  }
  remove_tree(old_dir);
  return Status::Ok();
}

// ---- digests ----

std::vector<Digest128> tensor_digests(const Checkpoint& checkpoint, size_t threads) {
  // The digest is a sum over words, so big tensors split into chunks that hash in parallel.
  constexpr uint64_t kChunkBytes = 8ull << 20;  // a multiple of the 8-byte word
  const auto& tensors = checkpoint.tensors();
  std::vector<TensorSeed> seeds(tensors.size());
  struct Chunk {
    size_t tensor;
    uint64_t begin;
    Digest128 sum;
  };
  std::vector<Chunk> chunks;
  for (size_t i = 0; i < tensors.size(); ++i) {
    seeds[i] = tensor_seed(tensors[i].name, tensors[i].dtype, tensors[i].shape);
    const uint64_t size = checkpoint.bytes(tensors[i]).size();
    for (uint64_t at = 0; at < size; at += kChunkBytes) chunks.push_back({i, at, {}});
  }
  ThreadPool pool(threads);
  pool.parallel_for(chunks.size(), [&](size_t c) {
    Chunk& ch = chunks[c];
    const auto bytes = checkpoint.bytes(tensors[ch.tensor]);
    ch.sum = words_digest(seeds[ch.tensor], bytes.subspan(ch.begin, std::min<uint64_t>(kChunkBytes, bytes.size() - ch.begin)),
                          ch.begin / 8);
  });
  std::vector<Digest128> out(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) out[i] = seeds[i].term;
  for (const Chunk& ch : chunks) out[ch.tensor] = digest_add(out[ch.tensor], ch.sum);
  return out;
}

std::vector<Digest128> tensor_digests(const Checkpoint& checkpoint, const TensorDigests* known, size_t threads) {
  if (known) {
    std::vector<Digest128> out;
    out.reserve(checkpoint.tensors().size());
    for (const CheckpointTensor& t : checkpoint.tensors()) {
      auto it = known->find(t.name);
      if (it == known->end()) break;
      out.push_back(it->second);
    }
    if (out.size() == checkpoint.tensors().size()) return out;
  }
  return tensor_digests(checkpoint, threads);
}

TensorDigests tensor_digests_by_name(const Checkpoint& checkpoint, std::span<const Digest128> digests) {
  TensorDigests out;
  for (size_t i = 0; i < checkpoint.tensors().size(); ++i) out.emplace(checkpoint.tensors()[i].name, digests[i]);
  return out;
}

Digest128 state_digest(std::span<const Digest128> tensor_digests) {
  Digest128 sum;
  for (const Digest128& d : tensor_digests) sum = digest_add(sum, d);
  return sum;
}

}  // namespace dws
