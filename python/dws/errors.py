"""Exceptions raised by dws: one class per library error code (docs/patch-format.md §8), all under
DwsError. This module is the only place codes map to classes."""


class DwsError(Exception):
    """A dws failure. `code` is the stable error number, `name` its name (e.g. "E_BASE_MISMATCH")."""

    def __init__(self, code, name, message):
        super().__init__(f"{name}: {message}")
        self.code, self.name, self.message = code, name, message


class InvalidArgumentError(DwsError, ValueError):
    """An unusable option or argument (E_INVALID_ARGUMENT)."""


class DwsIOError(DwsError, OSError):
    """The OS refused an operation, or a file that must exist does not, or one that must not does
    (E_IO, E_NOT_FOUND, E_EXISTS)."""


class NotFoundError(DwsIOError):
    """A file, tensor, object or version that must exist does not (E_NOT_FOUND)."""


class ExistsError(DwsIOError):
    """An output that must not exist does, e.g. another publisher committed the version (E_EXISTS)."""


class CorruptInputError(DwsError):
    """A file is malformed, corrupt, or uses something unsupported (E_HEADER_*, E_DTYPE, E_SHAPE,
    E_OFFSETS, E_DUPLICATE, E_PATCH_METADATA, E_PAYLOAD_HASH, E_POSITIONS, E_DECODE, E_UNSUPPORTED)."""


class MismatchError(DwsError):
    """The base is not the patch's base, or a result does not match its target (E_BASE_MISMATCH,
    E_TARGET_MISMATCH)."""


class PendingJournalError(DwsError):
    """An interrupted in-place apply must be recovered first (E_PENDING_JOURNAL)."""


class DeviceError(DwsError):
    """A CUDA or NCCL call failed (E_DEVICE)."""


class AccessDeniedError(DwsError, PermissionError):
    """The store refused the credentials or the request; retrying will not help (E_DENIED)."""


class StoreUnavailableError(DwsError, ConnectionError):
    """The store stayed unreachable, or kept failing, until its retry deadline (E_UNAVAILABLE)."""


class AuthenticationError(DwsError, PermissionError):
    """A version is not signed by our key: unsigned, signed by another key, or altered (E_AUTH)."""


class InternalError(DwsError):
    """A bug in dws (E_INTERNAL)."""


_BY_NAME = {
    "E_INVALID_ARGUMENT": InvalidArgumentError,
    "E_IO": DwsIOError,
    "E_NOT_FOUND": NotFoundError,
    "E_EXISTS": ExistsError,
    "E_BASE_MISMATCH": MismatchError,
    "E_TARGET_MISMATCH": MismatchError,
    "E_PENDING_JOURNAL": PendingJournalError,
    "E_DEVICE": DeviceError,
    "E_DENIED": AccessDeniedError,
    "E_UNAVAILABLE": StoreUnavailableError,
    "E_AUTH": AuthenticationError,
    "E_INTERNAL": InternalError,
}


def _from_core(code, name, message):
    """The exception for a library error (called by dws._core)."""
    return _BY_NAME.get(name, CorruptInputError)(code, name, message)
