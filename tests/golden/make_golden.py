"""Writes the must-fail golden corpus (tests/golden/): hand-crafted hostile files, each named
<kind>/<ERROR CODE>--<what>.<ext>; tests/golden_test.cc checks that dws refuses every one with exactly
that code and leaves its target untouched. Run from the repository root after changing a case:

    .venv/bin/python tests/golden/make_golden.py build/dws

Kinds: checkpoint/*.safetensors (opened as a checkpoint), index/*.json (a sharded checkpoint's index,
beside a valid shard), patch/*.dwsp (parsed, verified and applied to base.safetensors, in place and to
a new file), manifest/*.json (a version manifest; signed-* ones are read holding golden.secret).
The valid files the cases start from are kept too (base, next, *.valid.*): the test first checks that
they are accepted, so every refusal is the hostile edit's doing.
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np
import xxhash
from safetensors.numpy import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
DWS = sys.argv[1] if len(sys.argv) > 1 else "build/dws"


def xxh3_hex(data):
    return xxhash.xxh3_128_hexdigest(data)


def st_bytes(header, data, raw_header=None):
    """A safetensors file from a header dict (or raw header text) and the data section."""
    text = raw_header if raw_header is not None else json.dumps(header, separators=(",", ":"))
    text = text.encode() if isinstance(text, str) else text
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def parse_st(blob):
    n = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def put(kind, name, blob):
    os.makedirs(os.path.join(HERE, kind), exist_ok=True)
    with open(os.path.join(HERE, kind, name), "wb") as f:
        f.write(blob)


class PatchFile:
    """A patch taken apart: its metadata document and payload tensors, and put back together with
    consistent hashes (what a buggy or malicious writer could produce) unless told otherwise."""

    def __init__(self, blob):
        header, data = parse_st(blob)
        meta = header.pop("__metadata__")
        self.meta = dict(meta)
        self.doc = json.loads(meta["dws.patch"])
        self.payloads = {k: (v["dtype"], list(v["shape"]), data[v["data_offsets"][0]:v["data_offsets"][1]])
                         for k, v in header.items()}

    def seal(self, rehash=True, redigest=True, document=True):
        if rehash:
            for t in self.doc["tensors"]:
                t["payload_hash"] = xxh3_hex(b"".join(self.payloads[p][2] for p in t["payload"] if p in self.payloads))
        text = json.dumps(self.doc, separators=(",", ":"), sort_keys=True)
        meta = dict(self.meta, **{"dws.patch": text}) if document else dict(self.meta)
        if redigest:
            meta["dws.patch_digest"] = xxh3_hex(text.encode())
        header, data, at = {"__metadata__": meta}, b"", 0
        for name, (dtype, shape, raw) in self.payloads.items():
            header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [at, at + len(raw)]}
            data += raw
            at += len(raw)
        return st_bytes(header, data)

    def tensor(self, name):
        return next(t for t in self.doc["tensors"] if t["name"] == name)


def zstd_bytes(raw, level=19):
    return subprocess.run(["zstd", "-q", "-c", f"-{level}"], input=raw, check=True, capture_output=True).stdout


def main():
    for kind in ("checkpoint", "index", "patch", "manifest"):
        shutil.rmtree(os.path.join(HERE, kind), ignore_errors=True)
    rng = np.random.default_rng(3)
    base = {"w": rng.standard_normal(64).astype(np.float16), "b": rng.standard_normal(8).astype(np.float32)}
    nxt = {k: v.copy() for k, v in base.items()}
    nxt["w"][[1, 5, 9, 40]] += np.float16(0.5)
    nxt["b"][3] = np.float32(7.0)
    save_file(base, os.path.join(HERE, "base.safetensors"))
    save_file(nxt, os.path.join(HERE, "next.safetensors"))
    base_blob = open(os.path.join(HERE, "base.safetensors"), "rb").read()
    header, data = parse_st(base_blob)

    # ---- checkpoints ----
    put("checkpoint", "valid.safetensors", base_blob)
    ck = lambda name, blob: put("checkpoint", name + ".safetensors", blob)
    ck("E_HEADER_SIZE--shorter-than-the-length-field", b"\x08\x00\x00")
    ck("E_HEADER_SIZE--header-length-past-the-end", struct.pack("<Q", 4096) + b"{}      ")
    ck("E_HEADER_SIZE--header-length-above-the-100MiB-limit", struct.pack("<Q", 200 << 20) + b"{}      ")
    ck("E_HEADER_JSON--not-json", st_bytes(None, data, raw_header="{not json"))
    ck("E_HEADER_JSON--nul-byte-in-a-name", st_bytes(None, data, raw_header=json.dumps(header).replace('"w"', '"w\\u0000../x"')))
    ck("E_HEADER_JSON--tensor-entry-not-an-object", st_bytes(dict(header, w=[1, 2]), data))
    ck("E_HEADER_JSON--name-above-the-4096-byte-limit", st_bytes({("n" * 5000 if k == "w" else k): v for k, v in header.items()}, data))
    ck("E_DTYPE--unknown-dtype", st_bytes(dict(header, w=dict(header["w"], dtype="Q4")), data))
    ck("E_SHAPE--shape-disagrees-with-the-byte-range", st_bytes(dict(header, w=dict(header["w"], shape=[65])), data))
    ck("E_SHAPE--element-count-overflows", st_bytes(dict(header, w=dict(header["w"], shape=[2**62, 2**62, 16])), data))
    ck("E_HEADER_JSON--negative-dimension", st_bytes(dict(header, w=dict(header["w"], shape=[-64])), data))
    ck("E_SHAPE--rank-above-64", st_bytes(dict(header, w=dict(header["w"], shape=[1] * 65 + [64])), data))
    b_off, w_off = header["b"]["data_offsets"], header["w"]["data_offsets"]
    ck("E_OFFSETS--past-the-end-of-the-file", st_bytes(dict(header, w=dict(header["w"], data_offsets=[w_off[0], w_off[1] + 8 * 2**40])), data))
    ck("E_OFFSETS--overlapping-tensors", st_bytes(dict(header, w=dict(header["w"], data_offsets=[w_off[0] - 2, w_off[1] - 2])), data))
    ck("E_OFFSETS--a-hole-between-tensors", st_bytes(dict(header, w=dict(header["w"], data_offsets=[w_off[0] + 2, w_off[1] + 2])), data + b"\0\0"))
    ck("E_OFFSETS--end-before-begin", st_bytes(dict(header, w=dict(header["w"], data_offsets=[w_off[1], w_off[0]])), data))
    dup = json.dumps(header, separators=(",", ":"))
    dup = dup[:-1] + ',"w":' + json.dumps(header["w"], separators=(",", ":")) + "}"
    ck("E_DUPLICATE--a-name-twice", st_bytes(None, data, raw_header=dup))

    # ---- sharded checkpoint indexes (beside a valid shard "valid.safetensors") ----
    put("index", "valid.json", json.dumps({"metadata": {}, "weight_map": {"w": "valid.safetensors", "b": "valid.safetensors"}}).encode())
    ix = lambda name, doc: put("index", name + ".json", json.dumps(doc).encode() if not isinstance(doc, bytes) else doc)
    ix("E_HEADER_JSON--shard-path-escapes-the-directory", {"metadata": {}, "weight_map": {"w": "../valid.safetensors", "b": "valid.safetensors"}})
    ix("E_HEADER_JSON--absolute-shard-path", {"metadata": {}, "weight_map": {"w": "/etc/passwd", "b": "valid.safetensors"}})
    ix("E_HEADER_JSON--shard-name-with-a-slash", {"metadata": {}, "weight_map": {"w": "sub/valid.safetensors", "b": "valid.safetensors"}})
    ix("E_HEADER_JSON--index-not-json", b"{\"weight_map\": ")

    # ---- patches (applied to base.safetensors) ----
    with tempfile.TemporaryDirectory() as d:
        blobs = {}
        for enc in ("indices", "gaps_zstd", "xor_zstd", "native"):
            out = os.path.join(d, enc + ".dwsp")
            subprocess.run([DWS, "-q", "diff", os.path.join(HERE, "base.safetensors"), os.path.join(HERE, "next.safetensors"),
                            "-o", out, "--encoding", enc], check=True)
            blobs[enc] = open(out, "rb").read()
    for enc, blob in blobs.items():
        put("patch", f"valid.{enc}.dwsp", blob)
    pt = lambda name, blob: put("patch", name + ".dwsp", blob)
    good = blobs["indices"]

    def edit(enc, fn, **seal):
        p = PatchFile(blobs[enc])
        fn(p)
        return p.seal(**seal)

    pt("E_HEADER_SIZE--header-length-past-the-end", struct.pack("<Q", len(good)) + good[8:])
    pt("E_PATCH_METADATA--not-a-dws-patch", st_bytes(header, data))
    pt("E_PAYLOAD_HASH--document-digest-missing", edit("indices", lambda p: p.meta.pop("dws.patch_digest") and None, redigest=False))
    pt("E_PATCH_METADATA--no-patch-document", edit("indices", lambda p: p.meta.pop("dws.patch") and None, redigest=False, document=False))
    pt("E_UNSUPPORTED--format-version-3", edit("indices", lambda p: p.meta.update({"dws.format_version": "3"})))
    pt("E_PAYLOAD_HASH--document-digest-wrong", edit("indices", lambda p: p.doc.update(encoding="gaps"), redigest=False))
    pt("E_PAYLOAD_HASH--payload-altered", edit("indices", lambda p: p.payloads.update({"w:val": ("F16", [4], b"\0" * 8)}), rehash=False))

    def set_idx(values, dtype="I32"):
        return lambda p: p.payloads.update({"w:idx": (dtype, [len(values)], np.array(values, dtype=np.int32).tobytes())})
    pt("E_POSITIONS--unsorted", edit("indices", set_idx([1, 9, 5, 40])))
    pt("E_POSITIONS--duplicate", edit("indices", set_idx([1, 5, 5, 40])))
    pt("E_POSITIONS--out-of-range", edit("indices", set_idx([1, 5, 9, 64])))
    pt("E_POSITIONS--negative-index", edit("indices", set_idx([-1, 5, 9, 40])))
    pt("E_PATCH_METADATA--change-count-disagrees-with-payload", edit("indices", lambda p: p.tensor("w").update(changes=5)))
    pt("E_PATCH_METADATA--payload-tensor-missing", edit("indices", lambda p: p.payloads.pop("w:val") and None))
    pt("E_PATCH_METADATA--tensor-name-escapes", edit("indices", lambda p: p.tensor("b").update(name="../b")))
    pt("E_PATCH_METADATA--target-shard-escapes-the-output-directory",
       edit("indices", lambda p: p.doc["target"]["layout"]["shards"][0].update(file="../../evil.safetensors")))
    pt("E_PATCH_METADATA--unknown-encoding", edit("indices", lambda p: p.tensor("w").update(encoding="lz77")))
    pt("E_DTYPE--unknown-tensor-dtype", edit("indices", lambda p: p.tensor("w").update(dtype="F12")))
    pt("E_BASE_MISMATCH--tensor-base-digest", edit("indices", lambda p: p.tensor("w").update(base_digest="0" * 32)))
    pt("E_BASE_MISMATCH--base-state-digest", edit("indices", lambda p: p.doc["base"].update(state_digest="0" * 32)))
    def shift_target(p):
        # The tensor's target digest and the target state digest (their lane-wise sum) moved together, so
        # the document stays consistent and only the apply's result check can tell.
        bump = lambda h: h[:16] + "%016x" % ((int(h[16:], 16) + 1) % 2**64)
        p.tensor("w")["target_digest"] = bump(p.tensor("w")["target_digest"])
        p.doc["target"]["state_digest"] = bump(p.doc["target"]["state_digest"])
    pt("E_TARGET_MISMATCH--tensor-target-digest", edit("indices", shift_target))
    pt("E_TARGET_MISMATCH--value-altered-and-rehashed",
       edit("indices", lambda p: p.payloads.update({"w:val": ("F16", [4], b"\x11" * 8)})))

    def replace_payload(tensor, role, raw):
        def fn(p):
            name = next(n for n in p.tensor(tensor)["payload"] if n.endswith(":" + role)) if role else p.tensor(tensor)["payload"][0]
            dtype = p.payloads[name][0]
            p.payloads[name] = (dtype, [len(raw)], raw)
        return fn
    pt("E_DECODE--gaps-zstd-garbage", edit("gaps_zstd", replace_payload("w", None, b"\x28\xb5\x2f\xfd garbage, not a frame")))
    pt("E_DECODE--xor-zstd-garbage", edit("xor_zstd", replace_payload("w", None, b"\x28\xb5\x2f\xfd\x00\x00garbage")))
    # Decompression bombs: small frames that declare (and would inflate to) 1 GiB; refused from the
    # declared size before anything is allocated.
    bomb = zstd_bytes(b"\0" * (1 << 30))
    pt("E_DECODE--xor-zstd-bomb-declares-1GiB", edit("xor_zstd", replace_payload("w", None, bomb)))
    pt("E_DECODE--gaps-zstd-bomb-declares-1GiB", edit("gaps_zstd", replace_payload("w", None, bomb)))
    pt("E_DECODE--native-truncated-stream", edit("native", lambda p: p.payloads.update(
        {n: (p.payloads[n][0], [len(p.payloads[n][2]) // 2], p.payloads[n][2][:len(p.payloads[n][2]) // 2]) for n in p.tensor("w")["payload"]})))

    # ---- manifests ----
    with tempfile.TemporaryDirectory() as d:
        store = os.path.join(d, "store")
        secret = os.path.join(HERE, "golden.secret")
        with open(secret, "w") as f:
            f.write("golden-corpus-secret-0123456789\n")
        for signed in (False, True):
            s = store + ("-signed" if signed else "")
            for i, ck_path in enumerate(("base.safetensors", "next.safetensors")):
                args = [DWS, "-q", "publish", s, os.path.join(HERE, ck_path), "--snapshot", os.path.join(d, f"snap{signed}")]
                subprocess.run(args + (["--secret-file", secret] if signed else []), check=True)
        m1 = json.load(open(os.path.join(store, "versions", "%020d" % 1, "manifest.json")))
        s1 = json.load(open(os.path.join(store + "-signed", "versions", "%020d" % 1, "manifest.json")))
    put("manifest", "valid.json", json.dumps(m1, indent=1).encode())
    put("manifest", "signed-valid.json", json.dumps(s1, indent=1).encode())

    def mf(name, fn, src=m1, prefix=""):
        doc = json.loads(json.dumps(src))
        out = fn(doc)
        put("manifest", prefix + name + ".json", out if isinstance(out, bytes) else json.dumps(doc, indent=1).encode())

    def file_field(field, value):
        return lambda doc: doc["files"][0].update({field: value})
    mf("E_HEADER_JSON--not-json", lambda doc: b'{"format": "dws-version", ')
    mf("E_HEADER_JSON--nul-byte", lambda doc: json.dumps(doc).encode().replace(b"delta.dwsp", b"delta\x00.dwsp"))
    mf("E_DUPLICATE--a-key-twice", lambda doc: json.dumps(doc).encode()[:-1] + b', "version": 7}')
    mf("E_UNSUPPORTED--format-version-3", lambda doc: doc.update(format_version=3))
    mf("E_PATCH_METADATA--key-with-dotdot", file_field("key", "versions/%020d/../../../etc/passwd" % 1))
    mf("E_PATCH_METADATA--absolute-key", file_field("key", "/etc/passwd"))
    mf("E_PATCH_METADATA--key-of-another-version", file_field("key", "versions/%020d/x/delta.dwsp" % 0))
    mf("E_PATCH_METADATA--key-with-a-backslash", file_field("key", "versions/%020d/x\\..\\delta.dwsp" % 1))
    mf("E_PATCH_METADATA--overlong-key", file_field("key", "versions/%020d/" % 1 + "k" * 5000))
    mf("E_PATCH_METADATA--hidden-segment", file_field("key", "versions/%020d/.x/delta.dwsp" % 1))
    mf("E_PATCH_METADATA--unknown-role", file_field("role", "script"))
    mf("E_PATCH_METADATA--xxh3-not-hex", file_field("xxh3", "z" * 32))
    mf("E_PATCH_METADATA--size-negative", file_field("size_bytes", -1))
    mf("E_PATCH_METADATA--base-version-not-the-previous", lambda doc: doc.update(base_version=5))
    mf("E_PATCH_METADATA--delta-without-base", lambda doc: doc.pop("base_version") and None)
    mf("E_PATCH_METADATA--writers-above-4096", lambda doc: doc.update(writers=5000, sharded=True))
    mf("E_PATCH_METADATA--state-digest-not-hex", lambda doc: doc.update(state_digest="XYZ"))
    mf("E_AUTH--unsigned", lambda doc: None, src=m1, prefix="signed-")
    mf("E_AUTH--altered-after-signing", lambda doc: doc.update(changes=doc["changes"] + 1), src=s1, prefix="signed-")
    mf("E_AUTH--signature-removed", lambda doc: doc.pop("auth") and None, src=s1, prefix="signed-")
    mf("E_AUTH--another-key-id", lambda doc: doc["auth"].update(key_id="0123456789abcdef"), src=s1, prefix="signed-")
    mf("E_AUTH--another-algorithm", lambda doc: doc["auth"].update(alg="none"), src=s1, prefix="signed-")
    mf("E_AUTH--file-without-sha256", lambda doc: doc["files"][0].pop("sha256") and None, src=s1, prefix="signed-")
    counts = {k: len(os.listdir(os.path.join(HERE, k))) for k in ("checkpoint", "index", "patch", "manifest")}
    print("golden corpus:", counts)


if __name__ == "__main__":
    main()
