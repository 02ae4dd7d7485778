"""Change tracking without a snapshot: the trainer copies each new state into its published tensors
through a ChangeTracker, which notes exactly the elements whose bits change and their old values."""
from dws import _core
from dws._tensors import is_torch, tensor_arg


class ChangeTracker:
    """Records which elements of the published tensors change, as they are written.

    Use it with ``Publisher(store, tracker=tracker)``: each step, ``tracker.copy_(published, new)``
    casts the new values (e.g. fp32 master weights) to the published tensors' dtype chunk by chunk, with
    the framework's own cast, compares each chunk with what the published tensor holds, notes the
    elements that differ and writes the chunk in. The next publish then encodes those elements only:
    no snapshot of the previous version, no diff pass over the model.

    Extra memory: one chunk (``chunk_elements`` elements of the published dtype) while copying, plus
    the record, O(changes): a position (8 bytes) and the old value per changed element since the last
    publish. Every write to the published tensors must go through ``copy_`` (a write the tracker does
    not see makes the trainer's tensors differ from what receivers get; anchor versions catch it, see
    Publisher).
    """

    def __init__(self, chunk_elements=1 << 22):
        if chunk_elements < 1:
            raise ValueError(f"dws: chunk_elements must be positive, got {chunk_elements}")
        self.chunk_elements = int(chunk_elements)
        self._core = _core.ChangeTracker()

    def copy_(self, dst, src):
        """Copies ``src[name]`` into ``dst[name]`` for every name of ``dst`` (cast to dst's dtype; same
        number of elements), noting every element that changes. ``dst`` holds numpy arrays or torch CPU
        tensors; ``src`` the same kind, any dtype the framework casts from."""
        missing = sorted(set(dst) - set(src))
        if missing:
            raise KeyError(f"dws: no new values for {len(missing)} published tensor(s), e.g. '{missing[0]}'")
        for name in sorted(dst):
            self.write(name, dst[name], src[name])

    def write(self, name, dst, values, offset=0):
        """Copies ``values`` (any shape; flattened, cast to dst's dtype) into the published tensor
        ``dst`` from element ``offset`` on, noting every element that changes."""
        arg = tensor_arg(name, dst)
        flat = _flat(values)
        n = _numel(flat)
        for at in range(0, n, self.chunk_elements):
            chunk = _cast(flat[at:at + self.chunk_elements], dst)
            self._core.write(arg, offset + at, chunk)

    @property
    def recorded_changes(self):
        """Changed elements noted since the last publish (one changed twice may count twice)."""
        return self._core.recorded_changes

    @property
    def memory_bytes(self):
        """Bytes the record holds."""
        return self._core.memory_bytes

    def clear(self):
        """Forgets what was recorded (the next publish is then an anchor)."""
        self._core.clear()


def _flat(t):
    return t.detach().reshape(-1) if is_torch(t) else t.reshape(-1)


def _numel(t):
    return int(t.numel()) if is_torch(t) else int(t.size)


def _cast(chunk, like):
    if is_torch(chunk):
        if chunk.device.type != "cpu":
            raise ValueError(f"dws: values on {chunk.device}; a ChangeTracker tracks CPU tensors (CUDA tensors are "
                             "tracked on the device by a Publisher without a tracker)")
        return chunk.to(like.dtype).contiguous()
    import numpy as np  # numpy is a dependency of any numpy input
    return np.ascontiguousarray(chunk, dtype=like.dtype)
