"""dws — delta weight sync: keep inference engines bit-identical to a trainer by shipping only the
weights that changed.

    import dws
    pub = dws.Publisher("s3://bucket/run1")           # trainer side
    pub.publish_async(model_state_dict, step=step)     # returns at once; diff, encode, upload off-thread
    sub = dws.Subscriber("s3://bucket/run1", local="/tmp/run1.safetensors")   # receiver side
    sub.pull(into=engine_tensors)                      # in place, O(changes), verified

Importing dws never imports torch: numpy arrays and torch tensors (CPU or CUDA) are accepted.
"""
from dws import errors
from dws.errors import (AccessDeniedError, AuthenticationError, CorruptInputError, DwsError, DwsIOError, ExistsError, InvalidArgumentError,
                        MismatchError, NotFoundError, StoreUnavailableError)
from dws import _core
from dws.publisher import Publisher
from dws.subscriber import Subscriber
from dws.tracker import ChangeTracker

__all__ = ["Publisher", "Subscriber", "ChangeTracker", "DwsError", "InvalidArgumentError", "DwsIOError", "NotFoundError",
           "ExistsError", "CorruptInputError", "MismatchError", "AccessDeniedError", "StoreUnavailableError",
           "AuthenticationError",
           "errors", "open_store", "tensor_digest"]


def open_store(uri, endpoint=""):
    """Opens a store: a directory, file://DIR, or s3://BUCKET[/PREFIX] (docs/store.md)."""
    return _core.open_store(uri, endpoint)


def tensor_digest(name, tensor):
    """The format-v2 tensor digest of one tensor (docs/patch-format.md §5), as 32 hex digits."""
    from dws._tensors import tensor_arg
    return _core.tensor_digest(tensor_arg(name, tensor))
