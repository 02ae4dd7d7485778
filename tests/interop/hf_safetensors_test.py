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
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dws_spec import state_digest, tensor_digest  # noqa: E402


def run(dws, *args):
    proc = subprocess.run([dws, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"dws {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


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
