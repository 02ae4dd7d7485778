"""The receiver side: follow a store's versions, into a local checkpoint and into tensors in memory."""
import os
import threading

from dws import _core
from dws._tensors import cuda_stream, on_device, tensor_args
from dws.errors import DwsError, MismatchError, NotFoundError, StoreUnavailableError


class Subscriber:
    """Keeps `local` (a safetensors checkpoint on disk, the durable copy) at a version of `store`, and,
    when given, the tensors of an `into` mapping too.

    The local checkpoint is pulled in place in O(changes), verified, crash-safely (docs/store.md). A
    mapping given to pull(into=...) follows through the same patches, applied in memory in O(changes)
    and checked against the trainer's digests; it is reloaded whole from the local checkpoint the first
    time, after a pull restored an anchor, or when its recorded digests stop matching (e.g. something
    else wrote to it).

    secret_file: the file holding the secret the trainer signs with: only versions signed with it are
    taken (AuthenticationError otherwise, the local checkpoint and the mapping untouched). None: any.

    A mapping of CUDA tensors follows on the device (docs/gpu.md): each patch is decoded and checked on
    the host in O(changes) (the changed words are read back from the device for the digest check) and
    scattered where the tensors live; a patch the device cannot take without the whole base (native's
    class layout) makes the mapping reload whole from the local checkpoint.
    """

    def __init__(self, store, local, *, threads=0, secret_file=None, endpoint=""):
        self._store = _core.open_store(store, endpoint) if isinstance(store, str) else store
        self._auth = _core.AuthKey.from_file(os.fspath(secret_file)) if secret_file is not None else None
        self.local, self.threads = local, threads
        self.version = None
        self.state_digest = None
        self._mirror_id = None       # id() of the mapping the digests below describe
        self._mirror_digests = None  # {name: hex digest} of that mapping's tensors, as last verified
        self._follow_thread = None
        self._stop = threading.Event()

    def pull(self, into=None, version=None, audit=False, on_patch=None, stream=None):
        """Brings the local checkpoint (and `into`, a {name: tensor} mapping of the model's tensors,
        same names, dtypes and shapes) to `version` (default: the latest). `audit` rescans the local
        checkpoint and the mapping instead of trusting their recorded digests. Returns pull's dict
        (version, applied, used_anchor, bytes_downloaded, ...) plus "into_changes": elements written
        into the mapping by patches (None when it was reloaded whole). on_patch(patch), when given, is
        called with each patch applied (its .tensors and .positions(name) describe what it wrote; valid
        during the call only); patches applied while restoring an anchor are not passed (used_anchor).
        For CUDA tensors, device work is ordered on `stream` (an int cudaStream_t or a torch.cuda.Stream;
        None: PyTorch's current stream of their device) and done when pull returns."""
        args = None
        digests = None
        device, cuda = False, 0
        if into is not None:
            args = tensor_args(into)
            device = on_device(args)
            cuda = cuda_stream(into, stream) if device else 0
            if self._mirror_id == id(into):
                digests = self._mirror_digests
                if audit:  # do not trust the recorded digests: rescan the mapping (O(model))
                    digests = {a.name: _core.tensor_digest(a, cuda) for a in args}
        state = {"digests": digests, "changes": 0, "stale": digests is None}

        def apply(patch):
            if user_on_patch is not None:
                user_on_patch(patch)
            if args is None or state["stale"]:
                return
            try:
                if device:
                    written, state["digests"] = _core.apply_patch_to_device_tensors(patch, args, state["digests"], cuda)
                else:
                    written, state["digests"] = _core.apply_patch_to_tensors(patch, args, state["digests"])
                state["changes"] += written
            except MismatchError:
                state["stale"] = True  # the mapping is not at the patch's base: reload it whole below
            except DwsError as e:
                if not (device and e.name == "E_UNSUPPORTED"):
                    raise
                state["stale"] = True  # needs the whole base (native's class layout): reload it whole below

        user_on_patch = on_patch
        hook = apply if (args is not None or on_patch is not None) else None
        result = _core.pull(self._store, self.local, version, self.threads, audit, hook, self._auth)
        self.version, self.state_digest = result["version"], result["state_digest"]
        result["into_changes"] = None
        if args is not None:
            # The mapping must now describe what the local checkpoint holds (verified by the pull): any
            # tensor whose digest disagrees (audit found a write behind our back) means a reload.
            local = result["tensor_digests"]
            if not state["stale"] and local and any(state["digests"].get(a.name) != local.get(a.name) for a in args):
                state["stale"] = True
            if state["stale"] or result["used_anchor"]:
                _core.load_into(self.local, args, cuda)
                digests = result["tensor_digests"] or {a.name: _core.tensor_digest(a, cuda) for a in args}
                self._mirror_digests = {a.name: digests[a.name] for a in args}
            else:
                self._mirror_digests = state["digests"]
                result["into_changes"] = state["changes"]
            self._mirror_id = id(into)
        return result

    def follow(self, into=None, poll_seconds=1.0, on_version=None, on_error=None, stream=None):
        """Pulls on a background thread every `poll_seconds` until stop(). on_version(result) after each
        pull that reached a new version; on_error(exception) when a pull fails (the loop goes on when the
        store is only unavailable, and stops on any other error). `stream` as for pull (None: the
        background thread's current stream, PyTorch's default stream of the device)."""
        if self._follow_thread is not None:
            raise RuntimeError("dws: this Subscriber is already following")
        self._stop.clear()

        def loop():
            last = self.version
            while not self._stop.is_set():
                try:
                    r = self.pull(into=into, stream=stream)
                    if r["version"] != last and on_version:
                        on_version(r)
                    last = r["version"]
                except StoreUnavailableError as e:
                    if on_error:
                        on_error(e)
                except NotFoundError as e:
                    if self.version is not None:  # after a first version, a missing object is a real failure
                        if on_error:
                            on_error(e)
                        return
                    # an empty store is only "not yet"
                except Exception as e:  # noqa: BLE001 - reported, then the loop ends
                    if on_error:
                        on_error(e)
                    return
                self._stop.wait(poll_seconds)

        self._follow_thread = threading.Thread(target=loop, name="dws-subscriber", daemon=True)
        self._follow_thread.start()
        return self._follow_thread

    def stop(self):
        """Stops follow() and waits for its thread."""
        self._stop.set()
        if self._follow_thread is not None:
            self._follow_thread.join()
            self._follow_thread = None
