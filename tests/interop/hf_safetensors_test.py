"""Interop with the Hugging Face `safetensors` package (numpy backend, no torch needed).

HF writes base and next checkpoints; dws diffs and applies; HF reads dws's output checkpoint and the
patch itself, and a plain numpy scatter of the `indices` payload reproduces the target. The tensor and
state digests the patch records are recomputed here from docs/patch-format.md §5 alone (numpy + the
`xxhash` package), an implementation independent of dws's. Exits non-zero on the first failure.
Usage: hf_safetensors_test.py PATH_TO_DWS
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import xxhash
from safetensors import safe_open
from safetensors.numpy import load_file, save_file


def run(dws, *args):
    proc = subprocess.run([dws, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"dws {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


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
    """The format-v2 tensor digest as 32 hex digits, high lane first."""
    seed_bytes = (_s(b"dws-tensor-v2") + _s(name.encode()) + _s(DTYPE_NAMES[array.dtype].encode()) +
                  _u64(array.ndim) + b"".join(_u64(d) for d in array.shape))
    seed = xxhash.xxh3_128_intdigest(seed_bytes)
    seed_high, seed_low = seed >> 64, seed & M64
    raw = array.tobytes()
    raw += b"\0" * (-len(raw) % 8)
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


def state_digest(tensors):
    h = lo = 0
    for name, array in tensors.items():
        d = tensor_digest(name, array)
        h, lo = (h + int(d[:16], 16)) & M64, (lo + int(d[16:], 16)) & M64
    return f"{h:016x}{lo:016x}"


def main():
    dws = sys.argv[1]
    rng = np.random.default_rng(7)
    base = {
        "model.embed.weight": rng.standard_normal((300, 16)).astype(np.float32),
        "model.norm.weight": rng.standard_normal(64).astype(np.float16),
        "model.step": np.array(3, dtype=np.int64),
        "model.mask": rng.integers(0, 2, 50).astype(np.bool_),
    }
    nxt = {k: v.copy() for k, v in base.items()}
    flat = nxt["model.embed.weight"].reshape(-1)
    flat[rng.choice(flat.size, 40, replace=False)] += np.float32(1e-3)
    nxt["model.norm.weight"][[0, 7, 63]] = np.float16(-0.0)
    nxt["model.step"] = np.array(4, dtype=np.int64)
    nxt["model.added"] = np.arange(5, dtype=np.int32)
    with tempfile.TemporaryDirectory() as d:
        b, n = os.path.join(d, "base.safetensors"), os.path.join(d, "next.safetensors")
        save_file(base, b, metadata={"format": "np"})
        save_file(nxt, n, metadata={"format": "np"})
        for enc in ("indices", "gaps", "gaps_zstd", "xor_zstd"):
            patch, out = os.path.join(d, f"p.{enc}"), os.path.join(d, f"out.{enc}.safetensors")
            run(dws, "diff", b, n, "-o", patch, "--encoding", enc)
            run(dws, "apply", b, patch, "-o", out)
            got = load_file(out)  # HF reads what dws wrote
            assert set(got) == set(nxt), (enc, sorted(got))
            for k, v in nxt.items():
                assert got[k].dtype == v.dtype and got[k].shape == v.shape, (enc, k)
                assert got[k].tobytes() == v.tobytes(), (enc, k)
            with safe_open(patch, framework="np") as f:  # HF lists and reads the patch
                meta = f.metadata()
                assert meta["dws.format"] == "dws-patch" and meta["dws.format_version"] == "2"
                doc = json.loads(meta["dws.patch"])
                # Digests, recomputed from the spec.
                assert doc["base"]["state_digest"] == state_digest(base), enc
                assert doc["target"]["state_digest"] == state_digest(nxt), enc
                for t in doc["tensors"]:
                    assert t["target_digest"] == tensor_digest(t["name"], nxt[t["name"]]), (enc, t["name"])
                    if "base_digest" in t:
                        assert t["base_digest"] == tensor_digest(t["name"], base[t["name"]]), (enc, t["name"])
                names = set(f.keys())
                for t in doc["tensors"]:
                    assert set(t["payload"]) <= names, (enc, t["name"])
                if enc == "indices":
                    # The peer-compatible form: a numpy scatter of (idx, val) turns base into next.
                    for t in doc["tensors"]:
                        if t["change"] != "modified":
                            continue
                        idx = f.get_tensor(t["name"] + ":idx")
                        val = f.get_tensor(t["name"] + ":val")
                        patched = base[t["name"]].copy().reshape(-1)
                        patched[idx] = val
                        assert patched.tobytes() == nxt[t["name"]].tobytes(), t["name"]
        print("hf_safetensors interop: 4 encodings, HF-written inputs, HF-read outputs and patches, digests recomputed from the spec: OK")


if __name__ == "__main__":
    main()
