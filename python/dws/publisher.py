"""The trainer side: publish a {name: tensor} mapping as the next version of a store."""
import os
import queue
import tempfile
import threading

from dws import _core
from dws._tensors import tensor_args


class PublishHandle:
    """What publish_async returns: result() waits for this version and returns publish's dict."""

    def __init__(self):
        self._done = threading.Event()
        self._result = self._error = None

    def done(self):
        return self._done.is_set()

    def result(self, timeout=None):
        if not self._done.wait(timeout):
            raise TimeoutError("dws: publish still running")
        if self._error is not None:
            raise self._error
        return self._result

    def _finish(self, result=None, error=None):
        self._result, self._error = result, error
        self._done.set()


class Publisher:
    """Publishes versions of one model to a store (docs/store.md).

    store: a directory, or s3://BUCKET[/PREFIX]. snapshot: the publisher's copy of the last published
    state (default: a file under ~/.cache/dws); staging_dir: where a mapping is written before it is
    diffed (default: next to the snapshot); queue_size: how many published mappings may wait behind
    the one in flight before publish_async blocks (back-pressure). Several trainer ranks each publishing
    their own tensors use the CLI's --writer I/K for now.
    """

    def __init__(self, store, *, snapshot=None, staging_dir=None, anchor_every=16, threads=0, queue_size=1, endpoint=""):
        self._store = _core.open_store(store, endpoint) if isinstance(store, str) else store
        if snapshot is None:
            cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
            snapshot = os.path.join(cache, "dws", "py-publisher-" + _safe_name(self._store.describe()), "snapshot.safetensors")
        self.snapshot = snapshot
        self.staging_dir = staging_dir or os.path.dirname(os.path.abspath(snapshot))
        os.makedirs(self.staging_dir, exist_ok=True)
        os.makedirs(os.path.dirname(os.path.abspath(snapshot)), exist_ok=True)
        self.anchor_every, self.threads = anchor_every, threads
        self._queue = queue.Queue(maxsize=max(1, queue_size))
        self._worker = None
        self._error = None
        self._lock = threading.Lock()

    def publish(self, state_dict, *, step=None, anchor=False):
        """Publishes `state_dict` ({name: numpy array or torch CPU tensor}) as the next version and
        returns {"version", "committed", "changes", "delta_bytes", "state_digest", ...}. Waits for any
        publish_async still running first, so versions stay in call order."""
        self.wait()
        path = self._stage(state_dict)
        try:
            return _core.publish(self._store, path, self.snapshot, step, anchor, self.anchor_every, self.threads)
        finally:
            _remove(path)

    def publish_async(self, state_dict, *, step=None, anchor=False):
        """Captures `state_dict` now (one copy of its bytes into a staging file, on the caller's thread),
        then diffs, encodes and uploads it on a background thread; returns a PublishHandle. Blocks while
        queue_size captured versions already wait (back-pressure). An error of an earlier asynchronous
        publish is raised here, or by wait()."""
        self._raise_pending()
        path = self._stage(state_dict)
        handle = PublishHandle()
        self._ensure_worker()
        self._queue.put((path, step, anchor, handle))
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

    def _stage(self, state_dict):
        fd, path = tempfile.mkstemp(prefix=".dws-stage-", suffix=".safetensors", dir=self.staging_dir)
        os.close(fd)
        try:
            _core.write_checkpoint(path, tensor_args(state_dict))
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
            path, step, anchor, handle = item
            try:
                handle._finish(result=_core.publish(self._store, path, self.snapshot, step, anchor, self.anchor_every, self.threads))
            except BaseException as e:  # surfaced on the next call, on wait(), and by the handle
                with self._lock:
                    if self._error is None:
                        self._error = e
                handle._finish(error=e)
            finally:
                _remove(path)
                self._queue.task_done()

    def _raise_pending(self):
        with self._lock:
            error, self._error = self._error, None
        if error is not None:
            raise error


def _safe_name(text):
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[-100:]


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
