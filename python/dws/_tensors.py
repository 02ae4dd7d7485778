"""Tensors from numpy and PyTorch (CPU or CUDA) as the native core takes them, without importing torch."""
import sys

from dws import _core

# torch dtypes by their str() (so torch is never imported here), and numpy dtypes by name.
_TORCH_DTYPES = {
    "torch.float64": "F64", "torch.float32": "F32", "torch.float16": "F16", "torch.bfloat16": "BF16",
    "torch.float8_e4m3fn": "F8_E4M3", "torch.float8_e5m2": "F8_E5M2",
    "torch.int64": "I64", "torch.int32": "I32", "torch.int16": "I16", "torch.int8": "I8",
    "torch.uint8": "U8", "torch.bool": "BOOL",
}
# safetensors dtype name -> torch dtype attribute name ("BF16" -> "bfloat16").
TORCH_ATTR = {name: key[len("torch."):] for key, name in _TORCH_DTYPES.items()}
_NUMPY_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "int64": "I64", "int32": "I32", "int16": "I16",
    "int8": "I8", "uint64": "U64", "uint32": "U32", "uint16": "U16", "uint8": "U8", "bool": "BOOL",
}


def is_torch(t):
    return type(t).__module__.startswith("torch")


def dtype_name(t):
    """The safetensors dtype name of a numpy array or torch tensor (TypeError otherwise)."""
    if is_torch(t):
        name = _TORCH_DTYPES.get(str(t.dtype))
    else:
        dtype = getattr(t, "dtype", None)
        name = _NUMPY_DTYPES.get(getattr(dtype, "name", ""))
    if name is None:
        raise TypeError(f"dws: unsupported tensor type or dtype: {type(t).__name__} {getattr(t, 'dtype', None)}")
    return name


def tensor_arg(name, t):
    """A _core.TensorArg viewing `t`'s memory (no copy): a numpy array, or a torch tensor on the CPU or a
    CUDA device; C-contiguous."""
    dtype = dtype_name(t)  # TypeError for anything that is not a numpy array or torch tensor
    if is_torch(t):
        if t.device.type not in ("cpu", "cuda"):
            raise ValueError(f"dws: tensor '{name}' is on {t.device}; dws takes CPU and CUDA tensors")
        if not t.is_contiguous():
            raise ValueError(f"dws: tensor '{name}' is not contiguous; pass .contiguous()")
        shape = [int(d) for d in t.shape]
        array = t.detach()  # DLPack; nanobind takes any dtype, bf16 included
    else:
        shape = [int(d) for d in t.shape]
        array = t
        if not t.flags["C_CONTIGUOUS"]:
            raise ValueError(f"dws: array '{name}' is not C-contiguous; pass numpy.ascontiguousarray(...)")
    return _core.TensorArg(name, dtype, shape, array)


def tensor_args(mapping):
    """_core.TensorArgs for a {name: tensor} mapping, in name order."""
    return [tensor_arg(name, mapping[name]) for name in sorted(mapping)]


def on_device(args):
    """Whether the TensorArgs are CUDA tensors: True for all, False for none; mixing is a ValueError."""
    kinds = {a.on_device for a in args}
    if len(kinds) > 1:
        names = sorted(a.name for a in args if a.on_device)[:3]
        raise ValueError(f"dws: a mapping mixes CUDA tensors ({', '.join(names)}, ...) with CPU ones; move them to one side")
    return kinds == {True}


def cuda_stream(mapping, stream):
    """The CUDA stream (an int, a cudaStream_t) that device work on `mapping`'s tensors is ordered on:
    `stream` when given (an int or anything with .cuda_stream, e.g. torch.cuda.Stream); otherwise PyTorch's
    current stream of the tensors' device (torch is already imported by whoever made them); 0 (the legacy
    default stream) for tensors that are not PyTorch's."""
    if stream is not None:
        return int(getattr(stream, "cuda_stream", stream))
    torch = sys.modules.get("torch")
    for t in mapping.values():
        if torch is not None and is_torch(t) and t.device.type == "cuda":
            return int(torch.cuda.current_stream(t.device).cuda_stream)
    return 0
