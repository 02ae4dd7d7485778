"""The trainer side: publish a {name: tensor} mapping as the next version of a store."""
import os
import queue
import tempfile
import threading
import time

from dws import _core
from dws._tensors import cuda_stream, on_device, tensor_args
from dws.errors import ExistsError


class PublishHandle:
    """What publish_async returns: result() waits for this version and returns publish's dict."""

    def __init__(self):
        self._done = threading.Event()
        self._result = self._error = None

    def done(self):
        """Whether the publish has finished (committed or failed)."""
        return self._done.is_set()

    def result(self, timeout=None):
        """Waits up to `timeout` seconds (None: forever) and returns publish's dict, or raises its error."""
        if not self._done.wait(timeout):
            raise TimeoutError("dws: publish still running")
        if self._error is not None:
            raise self._error
        return self._result

    def _finish(self, result=None, error=None):
        self._result, self._error = result, error
        self._done.set()


class _Tracked:
    """What a tracking publisher knows of the last version it captured: the tensors' digests, so the
    next tracked patch can name its base without reading anything."""

    def __init__(self, version, layout, digests):
        self.version, self.layout, self.digests = version, layout, digests


class Publisher:
    """Publishes versions of one model to a store (docs/store.md, docs/python.md).

    store: a directory, file://DIR, or s3://BUCKET[/PREFIX] (or a store from dws.open_store).
    snapshot: the publisher's copy of the last published state, diffed against (default: a file under
        ~/.cache/dws); not used with a tracker.
    staging_dir: where a mapping is written before it is published (default: next to the snapshot).
    anchor_every: versions 0, N, 2N, ... also carry the whole model, so receivers can join from them.
    threads: worker threads for diff and encode (0: all cores).
    queue_size: captured versions that may wait behind the one in flight before publish_async blocks.
    writers, rank: this publisher is writer `rank` of `writers` trainer ranks, each publishing its own
        tensors (a shard); a version becomes visible when all ranks have published their part. Ranks
        publish in lockstep: a rank's next part waits (up to lockstep_timeout seconds) until the
        previous version is complete.
    tracker: a dws.ChangeTracker through which every write to the published tensors goes; versions are
        then built from its record in O(changes) instead of by a diff against a snapshot (single
        writer only). Anchor versions (and a new Publisher's first version) stage the whole mapping and
        check that the tracked changes explain it (TargetMismatch otherwise).
    secret_file: a file holding the secret shared with the receivers (16+ bytes): every version is
        signed with it (HMAC-SHA256, with each file's SHA-256), and the store's earlier versions must
        be signed with it too (AuthenticationError otherwise). None: unsigned versions.
    endpoint: S3 endpoint URL override.

    CUDA tensors (docs/gpu.md): with one writer, versions are found on the device against a snapshot of
    the last published state kept in `snapshot_memory` ("device", or "host": pinned host memory, sparing
    the device's); only the changes reach the host, and versions are published as with a tracker (the
    first version and anchors copy the whole mapping to the host). With several writers the mapping is
    copied to the host and published in snapshot mode. Device work is ordered on `stream` (an int
    cudaStream_t or a torch.cuda.Stream; None: PyTorch's current stream of the tensors' device) and
    publish/publish_async return from the capture once it is done, so the tensors may then be written.
    """

    def __init__(self, store, *, snapshot=None, staging_dir=None, anchor_every=16, threads=0, queue_size=1,
                 writers=1, rank=0, lockstep_timeout=600.0, tracker=None, secret_file=None, endpoint="",
                 snapshot_memory="device", stream=None):
        if not 0 <= rank < writers:
            raise ValueError(f"dws: rank {rank} of {writers} writers (ranks count from 0)")
        if tracker is not None and writers > 1:
            raise ValueError("dws: a tracker publishes single-writer versions; with writers > 1 use snapshot mode")
        self._store = _core.open_store(store, endpoint) if isinstance(store, str) else store
        self._auth = _core.AuthKey.from_file(os.fspath(secret_file)) if secret_file is not None else None
        self.writers, self.rank, self.lockstep_timeout = writers, rank, lockstep_timeout
        if snapshot is None:
            cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
            name = "py-publisher-" + _safe_name(self._store.describe())
            if writers > 1:
                name += f"-rank{rank}of{writers}"
            # With several writers the snapshot is the whole model as a sharded directory.
            snapshot = os.path.join(cache, "dws", name, "snapshot" if writers > 1 else "snapshot.safetensors")
        self.snapshot = snapshot
        self.staging_dir = staging_dir or os.path.dirname(os.path.abspath(snapshot))
        os.makedirs(self.staging_dir, exist_ok=True)
        os.makedirs(os.path.dirname(os.path.abspath(snapshot)), exist_ok=True)
        self.anchor_every, self.threads = anchor_every, threads
        self.tracker = tracker
        if snapshot_memory not in ("device", "host"):
            raise ValueError(f"dws: snapshot_memory is {snapshot_memory!r}; use 'device' or 'host'")
        self.snapshot_memory, self.stream = snapshot_memory, stream
        self._device = None  # _core.DeviceTracker, made on the first CUDA publish
        self._tracked = None  # _Tracked, or None: the next tracked publish is an anchor
        self._queue = queue.Queue(maxsize=max(1, queue_size))
        self._worker = None
        self._error = None
        self._lock = threading.Lock()

    def publish(self, state_dict, *, step=None, anchor=False):
        """Publishes `state_dict` ({name: numpy array, or torch tensor on the CPU or a CUDA device}) as the next version and
        returns {"version", "committed", "changes", "delta_bytes", "state_digest", ...}. Waits for any
        publish_async still running first, so versions stay in call order."""
        self.wait()
        job = self._capture(state_dict, step, anchor)
        try:
            return self._run_job(job)
        except BaseException:
            self._forget_tracked()
            raise
        finally:
            job.cleanup()

    def publish_async(self, state_dict, *, step=None, anchor=False):
        """Captures `state_dict` now, on the caller's thread, then diffs (or, with a tracker, encodes the
        recorded changes), uploads and commits it on a background thread; returns a PublishHandle.
        Capture copies the mapping's bytes into a staging file in snapshot mode (O(model)); with a
        tracker it takes the record and gathers the changed values (O(changes)), except on anchor
        versions. Blocks while queue_size captured versions already wait (back-pressure). An error of
        an earlier asynchronous publish is raised here, or by wait()."""
        self._raise_pending()
        job = self._capture(state_dict, step, anchor)
        handle = PublishHandle()
        self._ensure_worker()
        self._queue.put((job, handle))
        return handle

    def wait(self):
        """Waits until every publish_async has finished; raises the first error one of them met."""
        self._queue.join()
        self._raise_pending()

    def close(self):
        """Waits for pending publishes and stops the background thread."""
        try:
            self.wait()
        finally:
            if self._worker is not None:
                self._queue.put(None)
                self._worker.join()
                self._worker = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- capture (caller's thread) and run (background) ----

    def _capture(self, state_dict, step, anchor):
        args = tensor_args(state_dict)
        device = on_device(args)
        stream = cuda_stream(state_dict, self.stream) if device else 0
        if device and self.tracker is not None:
            raise ValueError("dws: a ChangeTracker records writes to CPU tensors; CUDA tensors are tracked on the device "
                             "(leave tracker=None)")
        if self.tracker is None and not (device and self.writers == 1):
            return _Job(self._run_snapshot, step=step, anchor=anchor, checkpoint=self._stage(args, stream))
        try:
            return self._capture_tracked(args, step, anchor, device, stream)
        except BaseException:
            self._forget_tracked()  # the next version starts over from an anchor
            raise

    def _capture_tracked(self, args, step, anchor, device, stream):
        """A version from recorded changes: the ChangeTracker's, or the device tracker's for CUDA tensors."""
        if self._tracked is not None and self._tracked.version is None:
            self.wait()  # the first version's number is known once it is committed (once per Publisher)
        layout = [(a.name, a.dtype, tuple(a.shape)) for a in args]
        rec = self._tracked
        descends = rec is not None and rec.layout == layout and not anchor
        job = _Job(self._run_tracked, step=step, anchor=anchor, scratch_dir=self.staging_dir)
        if descends:
            if device:
                job.taken = self._device.take(args, stream)  # O(changes) to the host
            else:
                job.taken = self.tracker._core.take(args, rec.digests)  # O(changes); clears the record
            job.args, job.base_digests = args, rec.digests
            digests = dict(rec.digests)
            digests.update(job.taken.target_digests)
            version = rec.version + 1
            want_anchor = self.anchor_every > 0 and version % self.anchor_every == 0
        else:
            if device:
                if self._device is None:
                    self._device = _core.DeviceTracker(self.snapshot_memory)
                digests = self._device.reset(args, stream)  # O(model): an anchor follows
            else:
                self.tracker.clear()
                digests = {a.name: _core.tensor_digest(a) for a in args}  # O(model): an anchor follows
            version, want_anchor = None, True
        if want_anchor:
            job.checkpoint = self._stage(args, stream)
        job.record = self._tracked = _Tracked(version, layout, digests)
        return job

    def _run_job(self, job):
        return job.run(job)

    def _run_snapshot(self, job):
        deadline = time.monotonic() + self.lockstep_timeout
        while True:
            try:
                return _core.publish(self._store, job.checkpoint, self.snapshot, job.step, job.anchor, self.anchor_every,
                                     self.threads, self.writers, self.rank, self._auth)
            except ExistsError:
                # Several writers: our part of the previous version is in and waits for other ranks.
                if self.writers == 1 or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _run_tracked(self, job):
        patch = ""
        # A delta when the record descends; with nothing changed an empty one, so the version (and its
        # step) still exists. Anchor versions carry the delta too: publish_prepared then checks that the
        # tracked changes explain the staged mapping.
        if job.taken is not None and (len(job.taken) > 0 or job.checkpoint is None):
            patch = job.scratch("delta.dwsp")
            _core.create_patch_from_changes(job.args, job.base_digests, job.taken, patch, self.threads)
        result = _core.publish_prepared(self._store, patch, job.checkpoint or "", job.step, self.threads, self._auth)
        if result["already_published"]:
            self._forget_tracked()  # the store's version is not necessarily what we captured
        elif job.record.version is None:
            job.record.version = result["version"]
        return result

    def _forget_tracked(self):
        self._tracked = None

    def _stage(self, args, stream):
        fd, path = tempfile.mkstemp(prefix=".dws-stage-", suffix=".safetensors", dir=self.staging_dir)
        os.close(fd)
        try:
            _core.write_checkpoint(path, args, stream=stream)
        except BaseException:
            _remove(path)
            raise
        return path

    def _ensure_worker(self):
        if self._worker is None:
            self._worker = threading.Thread(target=self._run, name="dws-publisher", daemon=True)
            self._worker.start()

    def _run(self):
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            job, handle = item
            try:
                handle._finish(result=self._run_job(job))
            except BaseException as e:  # surfaced on the next call, on wait(), and by the handle
                self._forget_tracked()  # a tracking publisher starts over with an anchor
                with self._lock:
                    if self._error is None:
                        self._error = e
                handle._finish(error=e)
            finally:
                job.cleanup()
                self._queue.task_done()

    def _raise_pending(self):
        with self._lock:
            error, self._error = self._error, None
        if error is not None:
            raise error


class _Job:
    """One captured version waiting to be published."""

    def __init__(self, run, *, step, anchor, checkpoint=None, scratch_dir=None):
        self.run, self.step, self.anchor, self.checkpoint = run, step, anchor, checkpoint
        self.taken = self.args = self.base_digests = self.record = None
        self._scratch_dir = scratch_dir
        self._scratch = []

    def scratch(self, suffix):
        fd, path = tempfile.mkstemp(prefix=".dws-", suffix="-" + suffix, dir=self._scratch_dir)
        os.close(fd)
        self._scratch.append(path)
        return path

    def cleanup(self):
        for p in self._scratch + ([self.checkpoint] if self.checkpoint else []):
            _remove(p)


def _safe_name(text):
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[-100:]


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
