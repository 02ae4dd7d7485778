"""An implementation of dws's digests from the spec alone (docs/patch-format.md §5): numpy + the
`xxhash` package, sharing no code with dws. The interop tests recompute what dws records with it.
"""
import json

import numpy as np
import xxhash

M64 = (1 << 64) - 1
DTYPE_NAMES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int64): "I64",
               np.dtype(np.bool_): "BOOL", np.dtype(np.int32): "I32"}


def _u64(x):
    return x.to_bytes(8, "little")


def _s(b):
    return _u64(len(b)) + b


def _mix(x):
    """docs/patch-format.md §5 mix(), lane-wise over a uint64 array: returns (high, low)."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(33))
        x = x * np.uint64(0xFF51AFD7ED558CCD)
        low = x ^ (x >> np.uint64(29))
        x = x ^ (x >> np.uint64(33))
        x = x * np.uint64(0xC4CEB9FE1A85EC53)
        x = x ^ (x >> np.uint64(33))
    return x, low


def tensor_digest(name, array):
    """The format-v2 tensor digest of a numpy array, as 32 hex digits, high lane first."""
    return tensor_digest_raw(name, DTYPE_NAMES[array.dtype], array.shape, array.tobytes())


def tensor_digest_raw(name, dtype, shape, raw):
    """The same from the safetensors dtype name (e.g. "BF16"), the shape and the little-endian bytes."""
    seed_bytes = (_s(b"dws-tensor-v2") + _s(name.encode()) + _s(dtype.encode()) +
                  _u64(len(shape)) + b"".join(_u64(d) for d in shape))
    seed = xxhash.xxh3_128_intdigest(seed_bytes)
    seed_high, seed_low = seed >> 64, seed & M64
    raw = bytes(raw) + b"\0" * (-len(raw) % 8)
    words = np.frombuffer(raw, dtype="<u8")
    j = np.arange(len(words), dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = ((j + np.uint64(seed_low)) * np.uint64(0x9E3779B97F4A7C15)) ^ words ^ np.uint64(seed_high)
    high, low = _mix(x)
    term_high = int(_mix(np.array([(seed_high + 1) & M64], dtype=np.uint64))[0][0])
    term_low = int(_mix(np.array([(seed_low + 2) & M64], dtype=np.uint64))[0][0])
    h = (term_high + int(high.sum(dtype=np.uint64))) & M64  # numpy sums wrap modulo 2^64
    lo = (term_low + int(low.sum(dtype=np.uint64))) & M64
    return f"{h:016x}{lo:016x}"


def add_digests(digests):
    """The state digest: the lane-wise sum of tensor digests (hex strings)."""
    h = lo = 0
    for d in digests:
        h, lo = (h + int(d[:16], 16)) & M64, (lo + int(d[16:], 16)) & M64
    return f"{h:016x}{lo:016x}"


def state_digest(tensors):
    """The state digest of {name: numpy array}."""
    return add_digests(tensor_digest(name, array) for name, array in tensors.items())


def read_safetensors_raw(path):
    """{name: (dtype name, shape, raw bytes)} of a safetensors file, read with nothing but json (numpy has
    no bfloat16, so the HF package cannot hand these to numpy)."""
    with open(path, "rb") as f:
        data = f.read()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    base = 8 + n
    return {name: (t["dtype"], tuple(t["shape"]), data[base + t["data_offsets"][0]:base + t["data_offsets"][1]])
            for name, t in header.items()}


def file_state_digest(path):
    """The state digest of a safetensors file."""
    return add_digests(tensor_digest_raw(name, *t) for name, t in read_safetensors_raw(path).items())


def xxh3_hex(data):
    """XXH3-128 of bytes as 32 hex digits: how manifests name every object."""
    return xxhash.xxh3_128_hexdigest(data)
