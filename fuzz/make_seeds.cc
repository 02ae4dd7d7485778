// make_seeds DIR — writes the fuzzers' seed corpora under DIR/<target>/, all derived from the reference
// trajectory cropped to fuzzer size (fuzz_common.h): checkpoints, patches of every encoding (from step 0
// for fuzz_apply, whose base is step 0; between neighbours for fuzz_patch), the codecs' payloads for
// fuzz_decode, and the manifests of a store those steps were published to, signed and unsigned.
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "dws/sync.h"
#include "fuzz_common.h"

namespace fs = std::filesystem;
using namespace dws;

namespace {

void write_file(const fs::path& path, std::span<const std::byte> bytes) {
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

std::vector<std::byte> read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> c((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> out(c.size());
  std::memcpy(out.data(), c.data(), c.size());
  return out;
}

int fail(const Status& st) {
  std::fprintf(stderr, "make_seeds: %s\n", st.to_string().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_seeds DIR\n");
    return 2;
  }
  const fs::path dir = argv[1];
  for (const char* t : {"fuzz_safetensors", "fuzz_patch", "fuzz_apply", "fuzz_decode", "fuzz_manifest"}) fs::create_directories(dir / t);
  const fs::path work = dir / "work";
  fs::create_directories(work);
  constexpr int kSteps = 7;
  std::vector<std::vector<fuzz::Tensor>> steps;
  for (int s = 0; s < kSteps; ++s) {
    steps.push_back(fuzz::cropped_step(s));
    if (steps.back().empty()) return fail(make_error(ErrorCode::kNotFound, "trajectory-small step " + std::to_string(s)));
    const fs::path p = work / ("step" + std::to_string(s) + ".safetensors");
    if (Status st = fuzz::write_model(p, steps.back()); !st.ok()) return fail(st);
    fs::copy_file(p, dir / "fuzz_safetensors" / p.filename(), fs::copy_options::overwrite_existing);
  }
  size_t patches = 0;
  struct Variant {
    const char* name;
    Encoding encoding;
    bool class_positions;
  };
  const Variant variants[] = {{"indices", Encoding::kIndices, false}, {"gaps", Encoding::kGaps, false},
                              {"gaps_zstd", Encoding::kGapsZstd, false}, {"xor_zstd", Encoding::kXorZstd, false},
                              {"native", Encoding::kNative, false}, {"native_class", Encoding::kNative, true},
                              {"auto", Encoding::kAuto, false}};
  for (const Variant& v : variants) {
    for (int s = 1; s < kSteps; ++s) {
      std::vector<int> froms{0};
      if (s > 1) froms.push_back(s - 1);
      for (int from : froms) {
        auto a = Checkpoint::open((work / ("step" + std::to_string(from) + ".safetensors")).string());
        auto b = Checkpoint::open((work / ("step" + std::to_string(s) + ".safetensors")).string());
        if (!a.ok() || !b.ok()) return fail(a.ok() ? b.status() : a.status());
        CreatePatchOptions o;
        o.encoding = v.encoding;
        o.class_positions = v.class_positions;
        o.threads = 1;
        const std::string name = std::string(v.name) + "-" + std::to_string(from) + "-" + std::to_string(s) + ".dwsp";
        const fs::path p = work / name;
        auto r = create_patch(*a, *b, p.string(), o);
        if (!r.ok()) return fail(r.status());
        fs::copy_file(p, dir / (from == 0 ? "fuzz_apply" : "fuzz_patch") / name, fs::copy_options::overwrite_existing);
        if (from == 0 && s == 1) {
          fs::copy_file(p, dir / "fuzz_patch" / name, fs::copy_options::overwrite_existing);
          fs::copy_file(p, dir / "fuzz_safetensors" / name, fs::copy_options::overwrite_existing);
        }
        ++patches;
      }
    }
  }
  size_t decode_seeds = 0;
  for (size_t e = 0; e < std::size(fuzz::kDecodeEncodings); ++e) {
    for (int s : {1, 3, 6}) {
      for (size_t i = 0; i < steps[0].size(); ++i) {
        auto enc = fuzz::reference_encoding(fuzz::kDecodeEncodings[e], steps[0][i], steps[s][i]);
        if (!enc.ok()) return fail(enc.status());
        if (enc->changes == 0 && s != 1) continue;
        const auto bytes = fuzz::serialize_decode_input(e, i, *enc);
        write_file(dir / "fuzz_decode" / ("e" + std::to_string(e) + "-s" + std::to_string(s) + "-t" + std::to_string(i)),
                   std::as_bytes(std::span(bytes)));
        ++decode_seeds;
      }
    }
  }
  // Manifests: the steps published to a directory store, unsigned and signed, with anchors and a fold.
  size_t manifests = 0;
  const char secret[] = "fuzz-secret-0123456789abcdef";  // the key fuzz_manifest holds
  const AuthKey key = AuthKey::from_secret(std::as_bytes(std::span(secret, sizeof secret - 1))).value();
  for (const AuthKey* auth : {static_cast<const AuthKey*>(nullptr), &key}) {
    const fs::path store_dir = work / (auth ? "store-signed" : "store");
    fs::remove_all(store_dir);
    auto store = open_store(store_dir.string());
    if (!store.ok()) return fail(store.status());
    PublishOptions o;
    o.anchor_every = 3;
    o.snapshot_path = (work / (auth ? "snap-signed" : "snap")).string();
    o.patch.threads = 1;
    o.auth = auth;
    for (int s = 0; s < kSteps; ++s) {
      o.step = static_cast<uint64_t>(100 + s);
      auto r = publish(**store, (work / ("step" + std::to_string(s) + ".safetensors")).string(), o);
      if (!r.ok()) return fail(r.status());
    }
    CreatePatchOptions fo;
    fo.threads = 1;
    if (auto f = fold(**store, 1, 5, work.string(), fo, auth); !f.ok()) return fail(f.status());
    for (const auto& entry : fs::recursive_directory_iterator(store_dir)) {
      if (entry.path().filename() != "manifest.json") continue;
      const auto bytes = read_file(entry.path());
      write_file(dir / "fuzz_manifest" / ((auth ? "signed-" : "") + std::to_string(manifests)), bytes);
      ++manifests;
    }
  }
  fs::remove_all(work);
  std::printf("make_seeds: %zu patches, %zu decoder inputs, %zu manifests, %d checkpoints under %s\n", patches, decode_seeds,
              manifests, kSteps, dir.c_str());
  return 0;
}
