"""Interop between dws's S3 layout and boto3 (the AWS SDK), against the real SeaweedFS of the ctest
fixture `s3`. Exits non-zero on the first failure.

1. dws publishes trajectory-small 0..3 to s3://BUCKET/<fresh prefix>, anchors as multipart uploads (5 MiB
   parts); boto3 lists the store, reads every
   manifest, downloads every object it names and checks its size and XXH3-128, and finds each anchor
   byte-identical to the published checkpoint and each state digest equal to one recomputed from the
   bytes by dws_spec.py (the spec's own implementation, no dws code).
2. boto3 lays out a store by hand, following docs/store.md: version 0 = the step-0 checkpoint as an anchor,
   version 1 = a `dws diff` patch step0 -> step1, manifests written last with digests computed by
   dws_spec.py. dws pulls it, ends bit-identical to step 1, and `dws verify --full` finds it clean.

Usage: boto3_interop_test.py PATH_TO_DWS FIXTURE_DIR TRAJECTORY_DIR
"""
import json
import os
import random
import subprocess
import sys
import tempfile
import time

import boto3

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "interop"))
from dws_spec import file_state_digest, read_safetensors_raw, xxh3_hex  # noqa: E402


def run(dws, *args, env=None):
    proc = subprocess.run([dws, *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"dws {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


def check(cond, what):
    if not cond:
        raise SystemExit("FAIL: " + what)


def main():
    dws, fixture, trajectory = sys.argv[1:4]
    env_file = os.path.join(fixture, "env")
    if not os.path.exists(env_file):
        raise SystemExit(f"no S3 fixture at {fixture} (run through ctest, which starts SeaweedFS)")
    env = dict(line.strip().split("=", 1) for line in open(env_file) if "=" in line)
    # 5 MiB parts: trajectory-small's 8.1 MiB anchors go up as 2-part multipart uploads.
    child_env = dict(os.environ, **env, DWS_S3_PART_MB="5")
    bucket = env["DWS_S3_BUCKET"]
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_REGION"],
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    step = [os.path.join(trajectory, f"step{i:03d}.safetensors") for i in range(4)]
    tag = f"{os.getpid()}-{random.randrange(1 << 30)}"

    with tempfile.TemporaryDirectory() as tmp:
        # 1. dws writes, boto3 reads.
        prefix = f"interop-dws-{tag}"
        for i in range(4):
            run(dws, "publish", f"s3://{bucket}/{prefix}", step[i], "--anchor-every", "2", "--step", str(i),
                "--snapshot", os.path.join(tmp, "snap.safetensors"), env=child_env)
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/versions/")
        manifests = sorted(o["Key"] for o in listed["Contents"] if o["Key"].endswith("/manifest.json"))
        check(len(manifests) == 4, f"4 manifests, found {manifests}")
        for i, key in enumerate(manifests):
            m = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            check(m["format"] == "dws-version" and m["version"] == i and m["step"] == i, f"manifest {key}: {m}")
            check(m["state_digest"] == file_state_digest(step[i]), f"version {i}: state digest {m['state_digest']} is not the spec's")
            for f in m["files"]:
                body = s3.get_object(Bucket=bucket, Key=f"{prefix}/{f['key']}")["Body"].read()
                check(len(body) == f["size_bytes"], f"{f['key']}: {len(body)} bytes, manifest says {f['size_bytes']}")
                check(xxh3_hex(body) == f["xxh3"], f"{f['key']}: XXH3-128 differs from the manifest's")
                if f["role"] == "anchor":
                    check(body == open(step[i], "rb").read(), f"{f['key']}: not byte-identical to {step[i]}")
                    etag = s3.head_object(Bucket=bucket, Key=f"{prefix}/{f['key']}")["ETag"]
                    check(etag.strip('"').endswith("-2"), f"{f['key']}: ETag {etag} is not a 2-part multipart upload's")
            roles = sorted(f["role"] for f in m["files"])
            check(roles == (["anchor"] if i == 0 else ["anchor", "delta"] if i == 2 else ["delta"]), f"version {i}: files {roles}")
        print(f"boto3 read {len(manifests)} dws versions: sizes, XXH3-128, multipart anchors and spec state digests agree")

        # 2. boto3 writes a store by hand, dws pulls it.
        prefix = f"interop-hand-{tag}"
        patch = os.path.join(tmp, "step0-1.dwsp")
        run(dws, "diff", step[0], step[1], "-o", patch)
        d0, d1 = file_state_digest(step[0]), file_state_digest(step[1])
        tensors = read_safetensors_raw(step[0])
        elements = sum(len(t[2]) // 2 for t in tensors.values())  # trajectory-small is all BF16
        model_bytes = sum(len(t[2]) for t in tensors.values())
        token = "0123456789abcdef"

        def put(key, body):
            s3.put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=body)

        for version, role, path in ((0, "anchor", step[0]), (1, "delta", patch)):
            vdir = f"versions/{version:020d}"
            body = open(path, "rb").read()
            obj = f"{vdir}/{token}/{'anchor.safetensors' if role == 'anchor' else 'delta.dwsp'}"
            put(obj, body)
            manifest = {"format": "dws-version", "format_version": 2, "version": version, "has_anchor": role == "anchor",
                        "sharded": False, "state_digest": d0 if version == 0 else d1,
                        "changes": 0, "elements": elements, "model_bytes": model_bytes,
                        "created_unix_ms": int(time.time() * 1000),
                        "files": [{"key": obj, "role": role, "name": "", "size_bytes": len(body), "xxh3": xxh3_hex(body)}]}
            if version == 1:
                manifest.update(base_version=0, base_state_digest=d0)
            put(f"{vdir}/manifest.json", json.dumps(manifest).encode())  # the commit point, last
        local = os.path.join(tmp, "local.safetensors")
        out = run(dws, "pull", f"s3://{bucket}/{prefix}", local, env=child_env).stdout
        check("at version 1" in out, f"pull of the hand-laid store: {out}")
        got, want = read_safetensors_raw(local), read_safetensors_raw(step[1])
        check(got == want, "the pulled checkpoint's tensors are not step 1's, bit for bit")
        run(dws, "verify", f"s3://{bucket}/{prefix}", "--full", env=child_env)
        print("dws pulled a store laid out by hand with boto3: bit-identical to step 1, verify --full clean")


if __name__ == "__main__":
    main()
