"""dws native core (use the `dws` package, not this module)"""

from collections.abc import Callable, Mapping, Sequence
from typing import Annotated

import numpy
from numpy.typing import NDArray


class Store:
    """An open store (dws::Store): a directory or an S3 prefix."""

    def describe(self) -> str:
        """The store's URI, for messages."""

def open_store(uri: str, endpoint: str = '') -> Store:
    """Opens a directory or s3:// store."""

class AuthKey:
    """
    The secret shared by a trainer and its receivers (dws/auth.h); never printed.
    """

    @staticmethod
    def from_file(path: str) -> AuthKey:
        """
        The key whose secret is the file's bytes, without one trailing newline (16 to 4096 bytes).
        """

    @staticmethod
    def from_secret(secret: bytes) -> AuthKey:
        """The key for a secret given as bytes (16 to 4096 bytes)."""

    @property
    def id(self) -> str:
        """
        16 hex digits identifying the key (safe to log; reveals nothing of the secret).
        """

    def __repr__(self) -> str: ...

class Patch:
    """
    A patch being applied by a pull; valid only inside the on_patch callback.
    """

    @property
    def base_state_digest(self) -> str:
        """The state digest (32 hex digits) the patch applies to."""

    @property
    def target_state_digest(self) -> str:
        """The state digest (32 hex digits) the patch ends at."""

    @property
    def tensors(self) -> list[tuple[str, int]]:
        """(name, changed elements) of every tensor the patch writes."""

    def positions(self, name: str) -> Annotated[NDArray[numpy.uint64], dict(shape=(None,))]:
        """
        The element positions (ascending, a numpy uint64 array) the patch writes in tensor `name`.
        """

def publish(store: Store, checkpoint: str, snapshot: str, step: int | None = None, anchor: bool = False, anchor_every: int = 16, threads: int = 0, writers: int = 1, writer_index: int = 0, auth: AuthKey | None = None) -> dict:
    """
    Publishes the checkpoint as the store's next version (dws::publish); writers > 1: this is writer writer_index's part; auth: sign it (and require the store's earlier versions signed) with this AuthKey.
    """

def pull(store: Store, local: str, version: int | None = None, threads: int = 0, audit: bool = False, on_patch: Callable[[Patch], None] | None = None, auth: AuthKey | None = None) -> dict:
    """
    Brings the local checkpoint to `version` (default: the latest) in place (dws::pull); on_patch(patch) after each applied patch; auth: take only versions signed with this AuthKey (AuthenticationError otherwise).
    """

class TensorArg:
    """
    A tensor's memory (numpy array, torch CPU or CUDA tensor; C-contiguous) with its safetensors dtype name and shape.
    """

    def __init__(self, name: str, dtype: str, shape: Sequence[int], array: Annotated[NDArray, dict(order='C')]) -> None: ...

    @property
    def name(self) -> str: ...

    @property
    def dtype(self) -> str: ...

    @property
    def shape(self) -> list[int]: ...

    @property
    def on_device(self) -> bool:
        """Whether the memory is a CUDA device's."""

def apply_patch_to_tensors(patch: Patch, tensors: Sequence[TensorArg], digests: Mapping[str, str]) -> tuple:
    """
    Applies the patch into the tensors in place, in O(changes); returns (elements written, new digests).
    """

def write_checkpoint(path: str, tensors: Sequence[TensorArg], metadata: Mapping[str, str] = {}, stream: int = 0) -> None:
    """
    Writes the tensors (host or CUDA; CUDA ones copied on `stream`) as one safetensors file, atomically (replacing `path`).
    """

def load_into(local: str, tensors: Sequence[TensorArg], stream: int = 0) -> None:
    """
    Copies each named tensor of the checkpoint at `local` into the given tensor (same dtype and shape; host or CUDA, CUDA ones on `stream`).
    """

def tensor_names(local: str) -> list[tuple[str, str, list[int]]]:
    """(name, dtype, shape) of every tensor of a checkpoint."""

def tensor_digest(tensor: TensorArg, stream: int = 0) -> str:
    """
    The format-v2 tensor digest (docs/patch-format.md §5) of one tensor, as 32 hex digits (a CUDA tensor is copied to the host on `stream`).
    """

def cuda_devices() -> int:
    """
    CUDA devices this build can use (0 when built without CUDA or none is visible).
    """

class DeviceTracker:
    """
    The changes of CUDA tensors against a snapshot of the last published state, found on the device (dws::gpu::DeviceChangeTracker).
    """

    def __init__(self, snapshot_memory: str = 'device') -> None: ...

    def reset(self, tensors: Sequence[TensorArg], stream: int = 0) -> dict[str, str]:
        """
        Snapshots the tensors as they are now (O(model)); returns their digests {name: hex}.
        """

    def take(self, tensors: Sequence[TensorArg], stream: int = 0) -> TakenChanges:
        """
        The changes since the last reset or take, as TakenChanges (only they reach the host); the snapshot follows. After an error, reset again.
        """

    @property
    def has_snapshot(self) -> bool: ...

    @property
    def snapshot_bytes(self) -> int:
        """Bytes the snapshot holds (device or pinned host)."""

def apply_patch_to_device_tensors(patch: Patch, tensors: Sequence[TensorArg], digests: Mapping[str, str], stream: int = 0) -> tuple:
    """
    apply_patch_to_tensors for CUDA tensors, on `stream`: checked in O(changes), then one scatter; returns (elements written, new digests).
    """

def publish_prepared(store: Store, patch_path: str, anchor_path: str, step: int | None = None, threads: int = 0, auth: AuthKey | None = None) -> dict:
    """
    Publishes a delta and/or anchor prepared elsewhere (dws::publish_prepared), without a snapshot; auth as for publish.
    """

class TakenChanges:
    """Changes taken from a ChangeTracker, for create_patch_from_changes."""

    @property
    def changes(self) -> int: ...

    @property
    def target_digests(self) -> dict[str, str]: ...

    def __len__(self) -> int: ...

class ChangeTracker:
    """
    Notes changed elements as tensors are written through it (dws/track.h).
    """

    def __init__(self) -> None: ...

    def write(self, tensor: TensorArg, offset: int, values: Annotated[NDArray, dict(order='C', device='cpu')]) -> None:
        """
        Copies `values` into the tensor from element `offset` on, noting every element whose bits change.
        """

    def take(self, tensors: Sequence[TensorArg], base_digests: Mapping[str, str]) -> TakenChanges:
        """
        The changes since the last take, against the tensors as they are now; clears the record.
        """

    def clear(self) -> None:
        """Forgets the record."""

    @property
    def recorded_changes(self) -> int:
        """Entries held (an element changed twice may count twice)."""

    @property
    def memory_bytes(self) -> int:
        """Bytes the record holds."""

def create_patch_from_changes(tensors: Sequence[TensorArg], base_digests: Mapping[str, str], taken: TakenChanges, patch_path: str, threads: int = 0) -> dict:
    """
    Writes the patch of tracked changes over the tensors' single-file layout (dws::create_patch_from_changes).
    """
