"""S3 throughput of dws against boto3, on loopback, against a real SeaweedFS started here.

A simulated qwen3-0.6B-shaped model (bf16, `dws simulate --shape qwen3-0.6b --steps 1`) is published and
pulled through s3://, and the same bytes are written and read with boto3 (upload_file / download_file,
its default transfer settings) in the same run. Each figure is a median over --runs; speeds are
reported as ratios to boto3 moving the same bytes.

  anchor publish   dws publish of version 0 (hash, multipart upload, commit, local snapshot seed)
                   vs boto3 upload_file of the checkpoint
  anchor pull      dws pull of version 0 into an empty directory (download, verify, install)
                   vs boto3 download_file of the checkpoint
  delta publish    dws publish of version 1 (diff against the snapshot, encode, upload the patch)
                   vs boto3 upload_file of the whole step-1 checkpoint (what a full-checkpoint sync sends)
  delta pull       dws pull of version 1 onto version 0 (download the patch, apply in place)
                   vs boto3 download_file of the whole step-1 checkpoint

The anchor's transfer alone (first byte to last, from dws's `--progress on` lines) is reported as a
ratio to boto3 too. Peak RSS of each dws process is reported (it includes the checkpoint pages dws maps to hash and
diff; the S3 driver's own bound is the S3Driver memory test's).

Usage: bench/s3_throughput.py [--dws build/dws] [--runs 3] [--work DIR] [--json OUT]
"""
import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import boto3
from boto3.s3.transfer import TransferConfig

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "s3"))
import weed_fixture  # noqa: E402


def timed(argv, env):
    """Runs argv (a dws store command, given --progress on); returns (seconds, peak RSS in MiB, seconds
    spent moving bytes as its final progress lines report them). Fails loudly."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv + ["--progress", "on"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read().decode()
    _, status, rusage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {err}")
    moving = sum(float(m) for m in re.findall(r"objects\)(?:, [^,]*/s)? in ([0-9.]+) s", err))
    return seconds, rusage.ru_maxrss / 1024, moving


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dws", default=os.path.join(HERE, "..", "build", "dws"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="dws-s3-bench-")
    weed_dir = os.path.join(work, "weed")
    os.makedirs(weed_dir, exist_ok=True)
    model = os.path.join(work, "model")
    if not os.path.exists(os.path.join(model, "step001.safetensors")):
        subprocess.run([args.dws, "simulate", "-o", model, "--shape", "qwen3-0.6b", "--steps", "1"], check=True)
    steps = [os.path.join(model, f"step{i:03d}.safetensors") for i in range(2)]
    size = os.path.getsize(steps[0])
    endpoint = weed_fixture.start(weed_dir)
    env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID=weed_fixture.ACCESS_KEY,
               AWS_SECRET_ACCESS_KEY=weed_fixture.SECRET_KEY, AWS_REGION="us-east-1")
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=weed_fixture.ACCESS_KEY,
                      aws_secret_access_key=weed_fixture.SECRET_KEY)
    cfg = TransferConfig()
    rows = {k: [] for k in ("anchor_publish", "anchor_pull", "delta_publish", "delta_pull",
                            "boto3_put0", "boto3_get0", "boto3_put1", "boto3_get1")}
    rss = {k: [] for k in ("anchor_publish", "anchor_pull", "delta_publish", "delta_pull")}
    moving = {k: [] for k in rss}
    delta_bytes = 0
    try:
        for run in range(args.runs):
            tag = f"run{run}-{random.randrange(1 << 30)}"
            uri = f"s3://{weed_fixture.BUCKET}/{tag}"
            snap = os.path.join(work, f"snap-{tag}.safetensors")
            local = os.path.join(work, f"local-{tag}.safetensors")
            t = timed([args.dws, "-q", "publish", uri, steps[0], "--step", "0", "--snapshot", snap], env)
            rows["anchor_publish"].append(t[0]), rss["anchor_publish"].append(t[1]), moving["anchor_publish"].append(t[2])
            t = timed([args.dws, "-q", "pull", uri, local], env)
            rows["anchor_pull"].append(t[0]), rss["anchor_pull"].append(t[1]), moving["anchor_pull"].append(t[2])
            t = timed([args.dws, "-q", "publish", uri, steps[1], "--step", "1", "--snapshot", snap], env)
            rows["delta_publish"].append(t[0]), rss["delta_publish"].append(t[1]), moving["delta_publish"].append(t[2])
            t = timed([args.dws, "-q", "pull", uri, local], env)
            rows["delta_pull"].append(t[0]), rss["delta_pull"].append(t[1]), moving["delta_pull"].append(t[2])
            log = json.loads(subprocess.run([args.dws, "log", uri, "--json"], env=env, capture_output=True, check=True).stdout)
            delta_bytes = log["versions"][1]["delta_bytes"]
            for i in range(2):
                key = f"boto3-{tag}/step{i}.safetensors"
                t0 = time.perf_counter()
                s3.upload_file(steps[i], weed_fixture.BUCKET, key, Config=cfg)
                rows[f"boto3_put{i}"].append(time.perf_counter() - t0)
                out = os.path.join(work, f"boto3-{tag}-{i}.safetensors")
                t0 = time.perf_counter()
                s3.download_file(weed_fixture.BUCKET, key, out, Config=cfg)
                rows[f"boto3_get{i}"].append(time.perf_counter() - t0)
                os.remove(out)
            for p in (snap, local):
                for q in (p, p + ".dws-version"):
                    if os.path.exists(q):
                        os.remove(q)
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr, flush=True)
    finally:
        weed_fixture.stop(weed_dir)
    med = {k: statistics.median(v) for k, v in rows.items()}
    result = {
        "model_bytes": size, "delta_bytes": delta_bytes, "runs": args.runs,
        "seconds_median": med,
        "peak_rss_mib_median": {k: statistics.median(v) for k, v in rss.items()},
        "transfer_seconds_median": {k: statistics.median(v) for k, v in moving.items()},
        "ratio_to_boto3": {  # time of dws / time of boto3 moving the checkpoint: < 1 is faster than boto3
            "anchor_publish": med["anchor_publish"] / med["boto3_put0"],
            "anchor_pull": med["anchor_pull"] / med["boto3_get0"],
            "delta_publish_vs_full_upload": med["delta_publish"] / med["boto3_put1"],
            "delta_pull_vs_full_download": med["delta_pull"] / med["boto3_get1"],
            # the anchor's bytes alone (dws's progress line: first byte to last), same bytes as boto3's
            "anchor_upload_only": statistics.median(moving["anchor_publish"]) / med["boto3_put0"],
            "anchor_download_only": statistics.median(moving["anchor_pull"]) / med["boto3_get0"],
        },
    }
    mib = size / 2**20
    print(f"model {mib:.0f} MiB, delta {delta_bytes / 2**20:.2f} MiB; medians over {args.runs} runs (SeaweedFS on loopback)")
    print(f"{'':18} {'dws s':>8} {'boto3 s':>8} {'dws/boto3':>10} {'dws MiB/s':>10} {'boto3 MiB/s':>12} {'dws peak RSS':>13}")
    for name, ours, theirs in (("anchor publish", "anchor_publish", "boto3_put0"), ("anchor pull", "anchor_pull", "boto3_get0"),
                               ("delta publish", "delta_publish", "boto3_put1"), ("delta pull", "delta_pull", "boto3_get1")):
        print(f"{name:18} {med[ours]:8.2f} {med[theirs]:8.2f} {med[ours] / med[theirs]:10.2f} {mib / med[ours]:10.0f} "
              f"{mib / med[theirs]:12.0f} {result['peak_rss_mib_median'][ours]:10.0f} MiB")
    r = result["ratio_to_boto3"]
    print(f"transfer alone (anchor bytes, dws's progress timing): upload {r['anchor_upload_only']:.2f}x boto3's time, "
          f"download {r['anchor_download_only']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
