// dws._core: the nanobind bindings behind the `dws` Python package (python/dws). Thin by design: the
// Python layer (Publisher, Subscriber) composes these calls. Tensors cross as nanobind ndarrays (the
// buffer protocol or DLPack: numpy arrays, torch CPU and CUDA tensors) without copies; the GIL is released
// for every call that does I/O, hashing or device work. Device calls take a CUDA stream as an int (a
// cudaStream_t; 0 is the legacy default stream) and run on the tensors' device. Errors become dws._core.Error(code, name, message); python/dws/
// errors.py maps them to exception classes, in one place.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/function.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/vector.h>

#include <cstring>
#include <memory>

#include "dws/auth.h"
#include "dws/checkpoint.h"
#include "dws/digest.h"
#include "dws/gpu.h"
#include "dws/patch.h"
#include "dws/store.h"
#include "dws/sync.h"
#include "dws/track.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

// dws.errors._from_core(code, name, message) -> the exception instance for that error code (the one
// place codes map to classes). Held for the process's life (never released: interpreter teardown order).
nb::handle& error_factory() {
  static nb::handle factory;
  return factory;
}

[[noreturn]] void raise(const dws::Status& st) {
  nb::object e = error_factory()(static_cast<int>(st.code()), std::string(dws::error_code_name(st.code())), st.message());
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(e.ptr())), e.ptr());
  throw nb::python_error();
}

void check(const dws::Status& st) {
  if (!st.ok()) raise(st);
}

template <typename T>
T value_or_raise(dws::Result<T>&& r) {
  if (!r.ok()) raise(r.status());
  return std::move(r).value();
}

// A tensor of any dtype on the host or a CUDA device, as raw bytes. The dtype name and shape come from the
// Python side, which knows the framework's dtype (numpy has no bfloat16); the byte size must agree.
using AnyArray = nb::ndarray<nb::c_contig>;
// Host memory only (nanobind refuses anything else with a TypeError naming the expected device).
using HostArray = nb::ndarray<nb::c_contig, nb::device::cpu>;

struct TensorArg {
  std::string name;
  std::string dtype;
  std::vector<uint64_t> shape;
  AnyArray array;
  bool on_device() const { return array.device_type() == nb::device::cuda::value; }
};

struct CheckedArg {
  dws::DType dtype;
  uint64_t bytes;
};

CheckedArg check_arg(const TensorArg& t) {
  auto dt = dws::dtype_from_name(t.dtype);
  if (!dt) raise(dws::make_error(dws::ErrorCode::kDtype, "tensor '" + t.name + "': unknown safetensors dtype '" + t.dtype + "'"));
  const int device = t.array.device_type();
  if (device != nb::device::cpu::value && device != nb::device::cuda::value && device != nb::device::cuda_host::value) {
    raise(dws::make_error(dws::ErrorCode::kInvalidArgument,
                          "tensor '" + t.name + "': DLPack device type " + std::to_string(device) + " (dws takes host and CUDA memory)"));
  }
  auto want = dws::checked_size_bytes(*dt, t.shape);
  if (!want || t.array.nbytes() != *want) {
    raise(dws::make_error(dws::ErrorCode::kInvalidArgument, "tensor '" + t.name + "': " + std::to_string(t.array.nbytes()) +
                                                                " bytes, but " + t.dtype + " of that shape is " +
                                                                (want ? std::to_string(*want) : std::string("too large"))));
  }
  return {*dt, *want};
}

// A host view of the tensor; a tensor in device memory is refused (this call reads it on the host).
dws::TensorView to_view(const TensorArg& t) {
  const CheckedArg c = check_arg(t);
  if (t.on_device()) {
    raise(dws::make_error(dws::ErrorCode::kInvalidArgument, "tensor '" + t.name + "' is on CUDA device " + std::to_string(t.array.device_id()) +
                                                                "; this call reads tensors on the host"));
  }
  return dws::TensorView{t.name, c.dtype, t.shape, std::span(static_cast<std::byte*>(t.array.data()), c.bytes)};
}

// The layout a tensor describes (name, dtype, shape), wherever its memory is.
dws::TensorSpec to_spec(const TensorArg& t) { return dws::TensorSpec{t.name, check_arg(t).dtype, t.shape}; }

dws::gpu::Stream as_stream(uintptr_t stream) { return reinterpret_cast<dws::gpu::Stream>(stream); }

// Makes the CUDA device of the tensors in device memory the calling thread's current one; they must share
// it. Returns whether any tensor is in device memory.
bool select_device(const std::vector<TensorArg>& tensors) {
  int device = -1;
  for (const TensorArg& t : tensors) {
    if (!t.on_device()) continue;
    if (device >= 0 && t.array.device_id() != device) {
      raise(dws::make_error(dws::ErrorCode::kInvalidArgument, "tensor '" + t.name + "' is on CUDA device " + std::to_string(t.array.device_id()) +
                                                                  ", others on device " + std::to_string(device)));
    }
    device = t.array.device_id();
  }
  if (device >= 0) check(dws::gpu::set_device(device));
  return device >= 0;
}

// Device tensors, all on one CUDA device, which becomes the calling thread's current device.
std::vector<dws::gpu::NamedDeviceTensor> to_device_tensors(const std::vector<TensorArg>& tensors) {
  std::vector<dws::gpu::NamedDeviceTensor> out;
  out.reserve(tensors.size());
  for (const TensorArg& t : tensors) {
    const CheckedArg c = check_arg(t);
    if (!t.on_device()) raise(dws::make_error(dws::ErrorCode::kInvalidArgument, "tensor '" + t.name + "' is not on a CUDA device"));
    out.push_back({t.name, c.dtype, t.shape, t.array.data()});
  }
  select_device(tensors);
  return out;
}

// Copies `bytes` between the host and a tensor wherever it lives (device memory: on `stream`, waited for).
dws::Status copy_tensor_bytes(void* dst, const void* src, uint64_t bytes, bool device, uintptr_t stream) {
  if (device) return dws::gpu::copy(dst, src, bytes, as_stream(stream));
  std::memcpy(dst, src, bytes);
  return dws::Status::Ok();
}

std::vector<dws::TensorView> to_views(const std::vector<TensorArg>& tensors) {
  std::vector<dws::TensorView> out;
  out.reserve(tensors.size());
  for (const auto& t : tensors) out.push_back(to_view(t));
  return out;
}

std::map<std::string, std::string> digests_to_hex(const dws::TensorDigests& d) {
  std::map<std::string, std::string> out;
  for (const auto& [name, digest] : d) out.emplace(name, dws::digest_hex(digest));
  return out;
}

dws::TensorDigests digests_from_hex(const std::map<std::string, std::string>& hex) {
  dws::TensorDigests out;
  for (const auto& [name, h] : hex) {
    auto d = dws::digest_from_hex(h);
    if (!d) raise(dws::make_error(dws::ErrorCode::kInvalidArgument, "tensor '" + name + "': digest '" + h + "' is not 32 hex digits"));
    out.emplace(name, *d);
  }
  return out;
}

// The single-file layout write_checkpoint gives these tensors (in the order given: tensor_args sorts by name).
dws::CheckpointLayout layout_of(const std::vector<TensorArg>& tensors, const std::string& file) {
  dws::CheckpointLayout layout;
  layout.shards.emplace_back();
  layout.shards[0].file = file;
  for (const auto& t : tensors) layout.shards[0].tensors.push_back(to_spec(t));
  return layout;
}

// Tracked changes taken from a ChangeTracker, held for create_patch_from_changes.
struct TakenChanges {
  std::vector<dws::TrackedTensorChanges> tensors;
};

nb::dict publish_result_dict(const dws::PublishResult& p) {
  nb::dict d;
  d["version"] = p.version;
  d["committed"] = p.committed;
  d["already_published"] = p.already_published;
  d["has_delta"] = p.has_delta;
  d["has_anchor"] = p.has_anchor;
  d["changes"] = p.changes;
  d["delta_bytes"] = p.delta_bytes;
  d["anchor_bytes"] = p.anchor_bytes;
  d["state_digest"] = p.state_digest;
  return d;
}

struct StoreHandle {
  std::unique_ptr<dws::Store> store;
};

// A patch handed to a pull's on_patch callback; valid only during the callback.
struct PatchHandle {
  const dws::Patch* patch = nullptr;
  const dws::Patch& get() const {
    if (!patch) raise(dws::make_error(dws::ErrorCode::kInvalidArgument, "this patch was only valid inside the on_patch callback"));
    return *patch;
  }
};

nb::dict pull_result_dict(const dws::PullResult& r) {
  nb::dict d;
  d["from_version"] = r.from_version ? nb::cast(*r.from_version) : nb::none();
  d["version"] = r.version;
  d["used_anchor"] = r.used_anchor;
  d["used_fold"] = r.used_fold;
  d["applied"] = r.applied;
  d["bytes_downloaded"] = r.bytes_downloaded;
  d["state_digest"] = r.state_digest;
  d["rescanned"] = r.rescanned;
  d["tensor_digests"] = digests_to_hex(r.tensor_digests);
  return d;
}

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "dws native core (use the `dws` package, not this module)";
  nb::object factory = nb::module_::import_("dws.errors").attr("_from_core");
  error_factory() = factory.release();

  nb::class_<StoreHandle>(m, "Store", "An open store (dws::Store): a directory or an S3 prefix.")
      .def("describe", [](const StoreHandle& s) { return s.store->describe(); }, "The store's URI, for messages.");
  m.def(
      "open_store",
      [](const std::string& uri, const std::string& endpoint) {
        dws::StoreOptions o;
        o.endpoint = endpoint;
        return StoreHandle{value_or_raise(dws::open_store(uri, o))};
      },
      "uri"_a, "endpoint"_a = "", "Opens a directory or s3:// store.");

  nb::class_<dws::AuthKey>(m, "AuthKey", "The secret shared by a trainer and its receivers (dws/auth.h); never printed.")
      .def_static(
          "from_file", [](const std::string& path) { return value_or_raise(dws::AuthKey::from_file(path)); }, "path"_a,
          "The key whose secret is the file's bytes, without one trailing newline (16 to 4096 bytes).")
      .def_static(
          "from_secret",
          [](nb::bytes secret) {
            return value_or_raise(dws::AuthKey::from_secret(std::as_bytes(std::span(static_cast<const char*>(secret.data()), secret.size()))));
          },
          "secret"_a, "The key for a secret given as bytes (16 to 4096 bytes).")
      .def_prop_ro("id", &dws::AuthKey::id, "16 hex digits identifying the key (safe to log; reveals nothing of the secret).")
      .def("__repr__", [](const dws::AuthKey& k) { return "AuthKey(id=" + k.id() + ")"; });

  nb::class_<PatchHandle>(m, "Patch", "A patch being applied by a pull; valid only inside the on_patch callback.")
      .def_prop_ro("base_state_digest", [](const PatchHandle& p) { return dws::digest_hex(p.get().header().base_state_digest); },
                   "The state digest (32 hex digits) the patch applies to.")
      .def_prop_ro("target_state_digest", [](const PatchHandle& p) { return dws::digest_hex(p.get().header().target_state_digest); },
                   "The state digest (32 hex digits) the patch ends at.")
      .def_prop_ro(
          "tensors",
          [](const PatchHandle& p) {
            std::vector<std::pair<std::string, uint64_t>> out;
            for (const auto& t : p.get().header().tensors) out.emplace_back(t.name, t.changes);
            return out;
          },
          "(name, changed elements) of every tensor the patch writes.")
      .def(
          "positions",
          [](const PatchHandle& p, const std::string& name) {
            auto r = dws::patch_positions(p.get(), name);
            if (!r.ok()) raise(r.status());
            auto* v = new std::vector<uint64_t>(std::move(*r));
            nb::capsule owner(v, [](void* q) noexcept { delete static_cast<std::vector<uint64_t>*>(q); });
            return nb::ndarray<nb::numpy, uint64_t, nb::ndim<1>>(v->data(), {v->size()}, owner);
          },
          "name"_a, "The element positions (ascending, a numpy uint64 array) the patch writes in tensor `name`.");

  m.def(
      "publish",
      [](StoreHandle& s, const std::string& checkpoint, const std::string& snapshot, std::optional<uint64_t> step, bool anchor,
         uint64_t anchor_every, size_t threads, uint32_t writers, uint32_t writer_index, const dws::AuthKey* auth) {
        dws::PublishOptions o;
        o.auth = auth;
        o.writers = writers;
        o.writer_index = writer_index;
        o.snapshot_path = snapshot;
        o.step = step;
        o.anchor = anchor;
        o.anchor_every = anchor_every;
        o.patch.threads = threads;
        dws::Result<dws::PublishResult> r = dws::make_error(dws::ErrorCode::kInternal, "not run");
        {
          nb::gil_scoped_release release;
          r = dws::publish(*s.store, checkpoint, o);
        }
        return publish_result_dict(value_or_raise(std::move(r)));
      },
      "store"_a, "checkpoint"_a, "snapshot"_a, "step"_a = nb::none(), "anchor"_a = false, "anchor_every"_a = 16, "threads"_a = 0,
      "writers"_a = 1, "writer_index"_a = 0, "auth"_a = nb::none(),
      "Publishes the checkpoint as the store's next version (dws::publish); writers > 1: this is writer writer_index's part; "
      "auth: sign it (and require the store's earlier versions signed) with this AuthKey.");

  m.def(
      "pull",
      [](StoreHandle& s, const std::string& local, std::optional<uint64_t> version, size_t threads, bool audit,
         std::function<void(PatchHandle)> on_patch, const dws::AuthKey* auth) {
        dws::PullOptions o;
        o.auth = auth;
        o.version = version;
        o.threads = threads;
        o.audit = audit;
        if (on_patch) {
          o.on_patch = [&](const dws::Patch& p) {
            nb::gil_scoped_acquire acquire;
            on_patch(PatchHandle{&p});
          };
        }
        dws::Result<dws::PullResult> r = dws::make_error(dws::ErrorCode::kInternal, "not run");
        {
          nb::gil_scoped_release release;
          r = dws::pull(*s.store, local, o);
        }
        return pull_result_dict(value_or_raise(std::move(r)));
      },
      "store"_a, "local"_a, "version"_a = nb::none(), "threads"_a = 0, "audit"_a = false, "on_patch"_a = nb::none(),
      "auth"_a = nb::none(),
      "Brings the local checkpoint to `version` (default: the latest) in place (dws::pull); on_patch(patch) after each applied patch; "
      "auth: take only versions signed with this AuthKey (AuthenticationError otherwise).");

  nb::class_<TensorArg>(m, "TensorArg",
                        "A tensor's memory (numpy array, torch CPU or CUDA tensor; C-contiguous) with its safetensors dtype name and shape.")
      .def(nb::init<std::string, std::string, std::vector<uint64_t>, AnyArray>(), "name"_a, "dtype"_a, "shape"_a, "array"_a)
      .def_ro("name", &TensorArg::name)
      .def_ro("dtype", &TensorArg::dtype)
      .def_ro("shape", &TensorArg::shape)
      .def_prop_ro("on_device", &TensorArg::on_device, "Whether the memory is a CUDA device's.");

  m.def(
      "apply_patch_to_tensors",
      [](const PatchHandle& p, const std::vector<TensorArg>& tensors, const std::map<std::string, std::string>& digests) {
        auto views = to_views(tensors);
        dws::TensorDigests d = digests_from_hex(digests);
        uint64_t written = 0;
        {
          nb::gil_scoped_release release;
          auto r = dws::apply_patch_to_tensors(p.get(), views, d);
          if (!r.ok()) {
            nb::gil_scoped_acquire acquire;
            raise(r.status());
          }
          written = *r;
        }
        return nb::make_tuple(written, digests_to_hex(d));
      },
      "patch"_a, "tensors"_a, "digests"_a,
      "Applies the patch into the tensors in place, in O(changes); returns (elements written, new digests).");

  m.def(
      "write_checkpoint",
      [](const std::string& path, const std::vector<TensorArg>& tensors, const std::map<std::string, std::string>& metadata,
         uintptr_t stream) {
        dws::CheckpointLayout layout;
        layout.shards.emplace_back();
        layout.shards[0].file = path.substr(path.find_last_of('/') + 1);
        for (const auto& [k, v] : metadata) layout.shards[0].metadata[k] = v;
        std::map<std::string, const TensorArg*, std::less<>> by_name;
        for (const auto& t : tensors) {
          if (!by_name.emplace(t.name, &t).second) raise(dws::make_error(dws::ErrorCode::kDuplicate, "tensor '" + t.name + "' given twice"));
          layout.shards[0].tensors.push_back(to_spec(t));
        }
        select_device(tensors);
        nb::gil_scoped_release release;
        dws::Status st = dws::write_checkpoint(path, layout,
                                               [&](const dws::TensorSpec& spec, std::span<std::byte> out) {
                                                 const TensorArg& t = *by_name.at(spec.name);
                                                 return copy_tensor_bytes(out.data(), t.array.data(), out.size(), t.on_device(), stream)
                                                     .with_context("tensor '" + spec.name + "'");
                                               },
                                               /*overwrite=*/true);
        nb::gil_scoped_acquire acquire;
        check(st);
      },
      "path"_a, "tensors"_a, "metadata"_a = std::map<std::string, std::string>(), "stream"_a = 0,
      "Writes the tensors (host or CUDA; CUDA ones copied on `stream`) as one safetensors file, atomically (replacing `path`).");

  m.def(
      "load_into",
      [](const std::string& local, const std::vector<TensorArg>& tensors, uintptr_t stream) {
        std::vector<dws::TensorSpec> specs;
        for (const auto& t : tensors) specs.push_back(to_spec(t));
        select_device(tensors);
        nb::gil_scoped_release release;
        auto cp = dws::Checkpoint::open(local);
        dws::Status st = cp.status();
        for (size_t i = 0; st.ok() && i < tensors.size(); ++i) {
          const dws::TensorSpec& v = specs[i];
          const dws::CheckpointTensor* t = cp->find(v.name);
          if (!t) {
            st = dws::make_error(dws::ErrorCode::kNotFound, local + " has no tensor '" + v.name + "'");
          } else if (t->dtype != v.dtype || t->shape != v.shape) {
            st = dws::make_error(dws::ErrorCode::kInvalidArgument, "tensor '" + v.name + "': " + local + " holds " +
                                                                       std::string(dws::dtype_name(t->dtype)) + " " + dws::shape_string(t->shape) +
                                                                       ", the tensor is " + std::string(dws::dtype_name(v.dtype)) + " " +
                                                                       dws::shape_string(v.shape));
          } else {
            const auto bytes = cp->bytes(*t);
            st = copy_tensor_bytes(tensors[i].array.data(), bytes.data(), bytes.size(), tensors[i].on_device(), stream)
                     .with_context("tensor '" + v.name + "'");
          }
        }
        nb::gil_scoped_acquire acquire;
        check(st);
      },
      "local"_a, "tensors"_a, "stream"_a = 0,
      "Copies each named tensor of the checkpoint at `local` into the given tensor (same dtype and shape; host or CUDA, "
      "CUDA ones on `stream`).");

  m.def(
      "tensor_names",
      [](const std::string& local) {
        auto cp = value_or_raise(dws::Checkpoint::open(local));
        std::vector<std::tuple<std::string, std::string, std::vector<uint64_t>>> out;
        for (const auto& t : cp.tensors()) out.emplace_back(t.name, std::string(dws::dtype_name(t.dtype)), t.shape);
        return out;
      },
      "local"_a, "(name, dtype, shape) of every tensor of a checkpoint.");

  m.def(
      "tensor_digest",
      [](const TensorArg& t, uintptr_t stream) {
        if (!t.on_device()) {
          const auto v = to_view(t);
          return dws::digest_hex(dws::tensor_digest(v.name, v.dtype, v.shape, v.data));
        }
        const CheckedArg c = check_arg(t);
        select_device({t});
        std::vector<std::byte> host(c.bytes);
        dws::Status st;
        {
          nb::gil_scoped_release release;
          st = dws::gpu::copy(host.data(), t.array.data(), c.bytes, as_stream(stream));
        }
        check(st.with_context("tensor '" + t.name + "'"));
        return dws::digest_hex(dws::tensor_digest(t.name, c.dtype, t.shape, host));
      },
      "tensor"_a, "stream"_a = 0,
      "The format-v2 tensor digest (docs/patch-format.md §5) of one tensor, as 32 hex digits (a CUDA tensor is copied to the host "
      "on `stream`).");

  m.def(
      "cuda_devices",
      []() -> int {
        if (!dws::gpu::built_with_cuda()) return 0;
        auto n = dws::gpu::device_count();
        return n.ok() ? *n : 0;
      },
      "CUDA devices this build can use (0 when built without CUDA or none is visible).");

  nb::class_<dws::gpu::DeviceChangeTracker>(m, "DeviceTracker",
                                            "The changes of CUDA tensors against a snapshot of the last published state, found on the "
                                            "device (dws::gpu::DeviceChangeTracker).")
      .def(
          "__init__",
          [](dws::gpu::DeviceChangeTracker* self, const std::string& snapshot_memory) {
            using Memory = dws::gpu::DeviceChangeTracker::Memory;
            if (snapshot_memory != "device" && snapshot_memory != "host") {
              raise(dws::make_error(dws::ErrorCode::kInvalidArgument, "snapshot_memory is '" + snapshot_memory + "'; use 'device' or 'host'"));
            }
            new (self) dws::gpu::DeviceChangeTracker(snapshot_memory == "device" ? Memory::kDevice : Memory::kPinnedHost);
          },
          "snapshot_memory"_a = "device")
      .def(
          "reset",
          [](dws::gpu::DeviceChangeTracker& t, const std::vector<TensorArg>& tensors, uintptr_t stream) {
            auto device = to_device_tensors(tensors);
            dws::Result<dws::TensorDigests> r = dws::make_error(dws::ErrorCode::kInternal, "not run");
            {
              nb::gil_scoped_release release;
              r = t.reset(device, as_stream(stream));
            }
            return digests_to_hex(value_or_raise(std::move(r)));
          },
          "tensors"_a, "stream"_a = 0, "Snapshots the tensors as they are now (O(model)); returns their digests {name: hex}.")
      .def(
          "take",
          [](dws::gpu::DeviceChangeTracker& t, const std::vector<TensorArg>& tensors, uintptr_t stream) {
            auto device = to_device_tensors(tensors);
            dws::Result<std::vector<dws::TrackedTensorChanges>> r = dws::make_error(dws::ErrorCode::kInternal, "not run");
            {
              nb::gil_scoped_release release;
              r = t.take(device, as_stream(stream));
            }
            return TakenChanges{value_or_raise(std::move(r))};
          },
          "tensors"_a, "stream"_a = 0,
          "The changes since the last reset or take, as TakenChanges (only they reach the host); the snapshot follows. After an error, "
          "reset again.")
      .def_prop_ro("has_snapshot", &dws::gpu::DeviceChangeTracker::has_snapshot)
      .def_prop_ro("snapshot_bytes", &dws::gpu::DeviceChangeTracker::snapshot_bytes, "Bytes the snapshot holds (device or pinned host).");

  m.def(
      "apply_patch_to_device_tensors",
      [](const PatchHandle& p, const std::vector<TensorArg>& tensors, const std::map<std::string, std::string>& digests, uintptr_t stream) {
        auto device = to_device_tensors(tensors);
        dws::TensorDigests d = digests_from_hex(digests);
        dws::Result<uint64_t> r = dws::make_error(dws::ErrorCode::kInternal, "not run");
        {
          nb::gil_scoped_release release;
          r = dws::gpu::apply_patch_to_device_tensors(p.get(), device, d, as_stream(stream));
        }
        const uint64_t written = value_or_raise(std::move(r));
        return nb::make_tuple(written, digests_to_hex(d));
      },
      "patch"_a, "tensors"_a, "digests"_a, "stream"_a = 0,
      "apply_patch_to_tensors for CUDA tensors, on `stream`: checked in O(changes), then one scatter; returns (elements written, new "
      "digests).");

  m.def(
      "publish_prepared",
      [](StoreHandle& s, const std::string& patch_path, const std::string& anchor_path, std::optional<uint64_t> step, size_t threads,
         const dws::AuthKey* auth) {
        dws::PublishPreparedOptions o;
        o.auth = auth;
        o.patch_path = patch_path;
        o.anchor_path = anchor_path;
        o.step = step;
        o.threads = threads;
        dws::Result<dws::PublishResult> r = dws::make_error(dws::ErrorCode::kInternal, "not run");
        {
          nb::gil_scoped_release release;
          r = dws::publish_prepared(*s.store, o);
        }
        return publish_result_dict(value_or_raise(std::move(r)));
      },
      "store"_a, "patch_path"_a, "anchor_path"_a, "step"_a = nb::none(), "threads"_a = 0, "auth"_a = nb::none(),
      "Publishes a delta and/or anchor prepared elsewhere (dws::publish_prepared), without a snapshot; auth as for publish.");

  nb::class_<TakenChanges>(m, "TakenChanges", "Changes taken from a ChangeTracker, for create_patch_from_changes.")
      .def_prop_ro("changes", [](const TakenChanges& t) {
        uint64_t n = 0;
        for (const auto& c : t.tensors) n += c.positions.size();
        return n;
      })
      .def_prop_ro("target_digests", [](const TakenChanges& t) {
        std::map<std::string, std::string> out;
        for (const auto& c : t.tensors) out.emplace(c.name, dws::digest_hex(c.target_digest));
        return out;
      })
      .def("__len__", [](const TakenChanges& t) { return t.tensors.size(); });

  nb::class_<dws::ChangeTracker>(m, "ChangeTracker", "Notes changed elements as tensors are written through it (dws/track.h).")
      .def(nb::init<>())
      .def(
          "write",
          [](dws::ChangeTracker& t, const TensorArg& tensor, uint64_t offset, const HostArray& values) {
            const dws::TensorView v = to_view(tensor);
            const std::span<const std::byte> bytes(static_cast<const std::byte*>(values.data()), values.nbytes());
            dws::Status st;
            {
              nb::gil_scoped_release release;
              st = t.write(v, offset, bytes);
            }
            check(st);
          },
          "tensor"_a, "offset"_a, "values"_a,
          "Copies `values` into the tensor from element `offset` on, noting every element whose bits change.")
      .def(
          "take",
          [](dws::ChangeTracker& t, const std::vector<TensorArg>& tensors, const std::map<std::string, std::string>& base_digests) {
            auto views = to_views(tensors);
            const dws::TensorDigests d = digests_from_hex(base_digests);
            dws::Result<std::vector<dws::TrackedTensorChanges>> r = dws::make_error(dws::ErrorCode::kInternal, "not run");
            {
              nb::gil_scoped_release release;
              r = t.take(views, d);
            }
            return TakenChanges{value_or_raise(std::move(r))};
          },
          "tensors"_a, "base_digests"_a,
          "The changes since the last take, against the tensors as they are now; clears the record.")
      .def("clear", &dws::ChangeTracker::clear, "Forgets the record.")
      .def_prop_ro("recorded_changes", &dws::ChangeTracker::recorded_changes, "Entries held (an element changed twice may count twice).")
      .def_prop_ro("memory_bytes", &dws::ChangeTracker::memory_bytes, "Bytes the record holds.");

  m.def(
      "create_patch_from_changes",
      [](const std::vector<TensorArg>& tensors, const std::map<std::string, std::string>& base_digests, const TakenChanges& taken,
         const std::string& patch_path, size_t threads) {
        const dws::CheckpointLayout layout = layout_of(tensors, "model.safetensors");  // only names, dtypes, shapes are read
        const dws::TensorDigests d = digests_from_hex(base_digests);
        dws::CreatePatchOptions o;
        o.threads = threads;
        dws::Result<dws::PatchStats> r = dws::make_error(dws::ErrorCode::kInternal, "not run");
        {
          nb::gil_scoped_release release;
          r = dws::create_patch_from_changes(layout, d, taken.tensors, patch_path, o);
        }
        const dws::PatchStats st = value_or_raise(std::move(r));
        nb::dict out;
        out["changes"] = st.changes;
        out["changed_tensors"] = st.changed_tensors;
        out["payload_bytes"] = st.payload_bytes;
        out["patch_file_bytes"] = st.patch_file_bytes;
        return out;
      },
      "tensors"_a, "base_digests"_a, "taken"_a, "patch_path"_a, "threads"_a = 0,
      "Writes the patch of tracked changes over the tensors' single-file layout (dws::create_patch_from_changes).");
}
